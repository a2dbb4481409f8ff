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
//     known, and keepalives hold the mapping open while nobody talks.
//   - Symmetric RTP with latching. Each direction is sent from the socket the
//     peer sends to, and the peer's real source address (which NAT may have
//     changed from the one in its SDP) is learned from its first packet. After
//     that, packets from other sources are dropped, which closes the "RTP
//     bleed" hole of relays that follow any sender.
//   - Quarantined ports. A port pair of a finished call is not reused until
//     it has received nothing for a while (30 s, at most 10 minutes), so late
//     packets of that call cannot reach the next one. Its sockets stay bound
//     meanwhile and discard what arrives ([Pool.NoSessionDrops]), so the old
//     peer gets no ICMP port unreachable.
//
// The per-packet path does no allocation and takes no lock that another
// packet path contends for: each socket has one reader goroutine, shared
// latch state is read through atomics, and the RTP header is parsed into a
// reused struct.
//
// SDP is not parsed here. The SIP layer allocates a [Session] from a
// [Bridge], writes [Session.LocalPort] into the SDP it sends on each leg, and
// passes the addresses it receives to [Session.SetRemote].
package rtpbridge
