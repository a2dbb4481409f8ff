//go:build linux

package main

import (
	"reflect"
	"testing"
)

func TestBencodeRoundTrip(t *testing.T) {
	in := map[string]any{"command": "offer", "call-id": "bench-1", "flags": []any{"trust-address"}, "n": 3}
	got := string(bencode(in))
	want := "d7:call-id7:bench-17:command5:offer5:flagsl13:trust-addresse1:ni3ee"
	if got != want {
		t.Fatalf("bencode = %q, want %q", got, want)
	}
	v, rest, err := bdecode([]byte(got))
	if err != nil || len(rest) != 0 {
		t.Fatalf("bdecode: %v, rest %q", err, rest)
	}
	if !reflect.DeepEqual(v, in) {
		t.Fatalf("round trip = %#v, want %#v", v, in)
	}
}

func TestBdecodeRefusesTruncated(t *testing.T) {
	for _, s := range []string{"", "d6:result", "5:ok", "l", "i12", "d1:ae", "-1:x"} {
		if _, _, err := bdecode([]byte(s)); err == nil {
			t.Errorf("bdecode(%q): no error", s)
		}
	}
}

func TestSdpPort(t *testing.T) {
	p, err := sdpPort("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 10004 RTP/AVP 8\r\n")
	if err != nil || p != 10004 {
		t.Fatalf("sdpPort = %d, %v; want 10004", p, err)
	}
	if _, err := sdpPort("v=0\r\n"); err == nil {
		t.Fatal("sdpPort without m=audio: no error")
	}
}
