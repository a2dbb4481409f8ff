// Package bench holds load benchmarks that need more than one process:
// BenchmarkPacedRelay (relayload_test.go), and the side-by-side relay
// measurement of run.sh, whose generator and rtpengine driver are in
// sidebyside/, whose C floor relay is floor/floor.c, and whose rtpbridge
// child is internal/relaychild. daemon.sh measures the daemon through its
// SIP sockets. It has no library code.
package bench
