// Package stunkeeper keeps the office router's NAT mapping for the SIP
// socket alive and tells the rest of linkmanager which public address the
// Internet sees.
//
// The original LinkManager sends a STUN Binding request every 10 s of
// idle time from its SIP port (65002). That one habit does two jobs: the
// router never forgets the UDP mapping, so inbound INVITEs keep arriving,
// and a DSL redial (new public IP) or a NAT that moved us to another
// public port is noticed within one interval, so the trunk can
// re-register before the provider starts sending to a dead address.
//
// STUN must leave from the SIP socket itself (a mapping belongs to one
// local port), so the keeper does not own a socket. Like tailscale's
// netcheck it is handed a Send func and fed the STUN packets the socket
// owner reads (see IsSTUN and Keeper.HandlePacket). Everything that
// depends on time runs on an injectable clock and plain timers, so the
// behaviour is testable on fake time with testing/synctest.
//
// NATTest is the NAT self-test (RFC 5780 behaviour discovery: mapping,
// filtering, hairpinning) with a verdict an admin can act on. Unlike the
// keeper it runs on sockets of its own that the caller hands over, so
// its probes can never disturb the SIP socket's mapping. MeasureLifetime
// measures how long the NAT keeps an idle binding, and NATWatch runs both
// for the daemon: at start and after every public address change, capping
// the keeper's idle keepalive by the lifetime (Keeper.LimitIdle).
package stunkeeper
