package b2bua

import (
	"fmt"
	"slices"
	"time"

	"github.com/linkmanager/linkmanager/rtpbridge"
)

// CallInfo is one call still up or being set up.
type CallInfo struct {
	ID        string
	Direction string
	Trunk     string
	From, To  string
	Codec     string
	Started   time.Time
	Answered  time.Time // zero until answered
	Media     rtpbridge.Stats
}

// Snapshot is the B2BUA's state at one instant.
type Snapshot struct {
	Calls []CallInfo // by start time
	// Media is the relay's totals, ended calls and live ones together
	// (AtoB: PBX to provider), read under one lock with the call table
	// so a call that ends is never counted twice or not at all.
	Media rtpbridge.Stats
	// RouteFallbacks counts in-dialog requests sent to the dialog's first
	// hop because its route set or Contact pointed at an address the
	// side does not trust, or at a name that did not resolve.
	RouteFallbacks uint64
}

// Snapshot reports the calls and the media totals.
func (b *B2BUA) Snapshot() Snapshot {
	b.mu.Lock()
	seen := map[*call]bool{}
	for _, c := range b.calls {
		seen[c] = true
	}
	snap := Snapshot{RouteFallbacks: b.hops.refused.Load()}
	snap.Media.AtoB, snap.Media.BtoA = b.ended[0], b.ended[1]
	snap.Calls = make([]CallInfo, 0, len(seen))
	for c := range seen {
		ms := c.media.Stats()
		addDirection(&snap.Media.AtoB, ms.AtoB)
		addDirection(&snap.Media.BtoA, ms.BtoA)
		c.mu.Lock()
		codec, answer := c.codec, c.answer
		c.mu.Unlock()
		snap.Calls = append(snap.Calls, CallInfo{ID: c.id, Direction: c.dir, Trunk: c.trunk, From: c.from, To: c.to,
			Codec: codec, Started: c.start, Answered: answer, Media: ms})
	}
	b.mu.Unlock()
	slices.SortFunc(snap.Calls, func(x, y CallInfo) int { return x.Started.Compare(y.Started) })
	return snap
}

// codecName names a payload type for people: static types by name,
// dynamic ones by number.
func codecName(pt string) string {
	switch pt {
	case "0":
		return "PCMU"
	case "8":
		return "PCMA"
	case "9":
		return "G722"
	case "18":
		return "G729"
	case "":
		return ""
	}
	return fmt.Sprintf("PT %s", pt)
}
