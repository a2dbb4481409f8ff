// Package rtpbridge relays RTP and RTCP between the LAN leg (the PBX) and the
// WAN leg (the provider) of a call anchored by the linkmanager B2BUA.
//
// The daemon sits behind an office NAT, so media has to be anchored here: the
// PBX's private addresses never reach the provider, and the provider's media
// has to arrive on a port that the NAT router has already seen traffic leave
// from. Three things follow from that and shape this package:
//
//   - Pinhole first. The router pins a public port to whichever flow it sees
//     first. If the provider's first RTP packet arrives before ours has left,
//     our media leaves from a different public port and the call has one-way
//     audio for its whole length. [Session.SetRemote] therefore sends one
//     harmless packet on the WAN leg as soon as the provider's SDP address is
//     known, and keepalives hold the mapping open while nobody talks. A
//     remote that starts sending before even that (its RTP leaves with its
//     answer, which reaches us later, through the provider) still wins the
//     race: then the answered leg hears nothing while we send, the
//     relay reports it once per port pair ([Config.OnNoInbound]), and
//     [Session.Rebind] moves the leg to a fresh pair whose pinhole leaves
//     first, for the SIP layer to re-INVITE the remote with.
//   - Symmetric RTP with latching that cannot be stolen. Each direction is
//     sent from the socket the peer sends to, and to where the peer really
//     sends from. Which sources may latch is a per-leg [Latching] rule:
//     nothing before the SIP layer has set the SDP address, then only that
//     exact address (strict, the LAN default), its IP from any port (ip,
//     the Internet default: NAT may rewrite ports) or anyone (any). A
//     latched source is replaced only after it has been silent for
//     [Config.RelatchAfter]; a burst or a new SSRC alone never moves it.
//     That closes the "RTP bleed" hole of relays that follow any sender;
//     refused packets and takeovers are counted in [Stats] and logged
//     rate-limited per session.
//   - Quarantined ports that do not run out. A port pair of a finished call
//     stays bound and discards what arrives ([Pool.NoSessionDrops]) until
//     it has been quiet for a while (30 s, at most 10 minutes), so the old
//     peer gets no ICMP port unreachable. When no pair is free, a new call
//     takes over the quietest quarantined pair at once: the latching rule,
//     and a taint of the old call's sources, keep the old call's late
//     packets out of the new one.
//
// The per-packet path does no allocation and takes no lock that another
// packet path contends for: each socket is served by one reader at a time,
// shared latch state is read through atomics, and the RTP header is parsed
// into a reused struct. Who reads is [Config.IO]:
//
//   - [IOGoroutines], the default and the portable fallback: one reader
//     goroutine per socket on Go's netpoller, so every packet costs a
//     goroutine wake-up, which on the 2-vCPU VMs we measure costs far more
//     than the relay's own work (shared/notes/perf-anchors.md).
//   - [IOEpoll], on Linux: a reactor goroutine (or [Config.Reactors])
//     owning a level-triggered epoll over raw non-blocking sockets that
//     the netpoller never sees, so one wake-up serves every ready socket;
//     a socket is drained with one recvmmsg and what it forwards leaves
//     with one sendmmsg. Only the reactor's epoll fd is on the netpoller:
//     a goroutine of our own blocked in epoll_wait on a locked thread was
//     measured slower, since the scheduler hands its P off and back on
//     every wake-up. Sessions and quarantine drains are handlers attached
//     to a socket; a socket's mutex is held while it is served, so pausing
//     it (Close, Rebind, a take-over) returns once its handler is done, as
//     waiting for a reader goroutine does.
//
// SDP is not parsed here. The SIP layer allocates a [Session] from a
// [Bridge], writes [Session.LocalPort] into the SDP it sends on each leg, and
// passes the addresses it receives to [Session.SetRemote].
package rtpbridge
