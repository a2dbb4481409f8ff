// Package bench holds load benchmarks that need more than one process. It
// has no library code; see relayload_test.go.
package bench
