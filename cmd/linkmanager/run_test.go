package main

import (
	"testing"

	"github.com/linkmanager/linkmanager/linkmanager/config"
)

// A trunk's caller_id and did_from reach the trunk as configured.
func TestTrunkOptionsCallerID(t *testing.T) {
	c, err := config.Parse([]byte(`sip: {listen: 192.0.2.2:65002}
trunks:
  - name: provider
    registrar: sip.example.net
    username: "4930123456"
    password: secret
    country_code: "49"
    caller_id: {from_user: number, asserted: pai, number_format: e164-no-plus}
    did_from: header:P-Called-Party-ID
    outbound_allow: ["0*"]
    outbound_deny: ["0900*"]
    max_calls: 4
pbx: {listen: 192.168.100.2, address: 192.168.100.20, emergency_numbers: ["112", "116117"], max_call_rate: 2}
`))
	if err != nil {
		t.Fatal(err)
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	o := trunkOptions(c.Trunks)[0]
	if o.CallerFromUser != "number" || o.CallerAsserted != "pai" || o.CallerFormat != "e164-no-plus" ||
		o.DIDFrom != "header:P-Called-Party-ID" {
		t.Errorf("trunk options %+v lost caller_id or did_from", o)
	}
	if len(o.Outbound.Allow) != 1 || o.Outbound.Deny[0] != "0900*" || o.MaxCalls != 4 {
		t.Errorf("trunk options %+v lost the outbound rules", o)
	}
	if p := pbxOptions(c.PBX); len(p.Emergency) != 2 || p.Emergency[1] != "116117" || p.MaxCallRate != 2 {
		t.Errorf("pbx options %+v lost emergency_numbers or max_call_rate", p)
	}
}
