package b2bua

import (
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// maxParts bounds the parts of a multipart body we look through.
const maxParts = 8

// sdpBody is the SDP that m carries, nil if none (issue 9 item 8: only
// application/sdp is parsed as SDP). A multipart body (SIP-I carriers send
// SDP with an ISUP part, RFC 3204) gives its application/sdp part; other
// content types, and a malformed multipart, give nil, as does no body. A
// body without Content-Type is taken as SDP, as RFC 3261 §7.4.1 leaves
// to the receiver and our peers send it.
func sdpBody(m interface {
	Body() []byte
	ContentType() *sip.ContentTypeHeader
}) []byte {
	body := m.Body()
	if len(body) == 0 {
		return nil
	}
	ct := m.ContentType()
	if ct == nil {
		return body
	}
	mt, params, err := mime.ParseMediaType(ct.Value())
	switch {
	case err != nil:
		return nil
	case mt == "application/sdp":
		return body
	case strings.HasPrefix(mt, "multipart/") && params["boundary"] != "":
		r := multipart.NewReader(bytes.NewReader(body), params["boundary"])
		for range maxParts {
			p, err := r.NextPart()
			if err != nil {
				return nil
			}
			if pt, _, err := mime.ParseMediaType(p.Header.Get("Content-Type")); err == nil && pt == "application/sdp" {
				b, err := io.ReadAll(io.LimitReader(p, int64(len(body))))
				if err != nil {
					return nil
				}
				return b
			}
		}
	}
	return nil
}
