package linkmanager

import (
	"log/slog"
	"math"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
	"go.uber.org/zap/zapcore"
)

// sipgo logs per packet: a datagram it cannot parse is logged whole, at
// error level, with a stack trace through zapslog's default. Anything on
// the Internet can send such packets (40k junk datagrams once made 180 MiB
// of log in 20 s), so its bridge is bounded.
const (
	sipgoTick     = 10 * time.Second // sampling window
	sipgoBurst    = 10               // lines per message and level per window
	sipgoMaxField = 256              // bytes kept of a string field
)

// SIPGoLogger bridges sipgo's slog output to log's "sipgo" logger: at most
// sipgoBurst lines per message and level every sipgoTick, string fields cut
// to sipgoMaxField bytes, and no stack traces (they say where in sipgo, not
// what was wrong with the packet).
func SIPGoLogger(log *zap.Logger) *slog.Logger {
	core := zapcore.NewSamplerWithOptions(truncCore{log.Named("sipgo").Core()}, sipgoTick, sipgoBurst, 0)
	return slog.New(zapslog.NewHandler(core, zapslog.AddStacktraceAt(slog.Level(math.MaxInt32))))
}

// truncCore cuts long string fields before they reach the wrapped core.
type truncCore struct{ zapcore.Core }

func (c truncCore) With(fs []zapcore.Field) zapcore.Core {
	return truncCore{c.Core.With(truncFields(fs))}
}

func (c truncCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c truncCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	return c.Core.Write(e, truncFields(fs))
}

func truncFields(fs []zapcore.Field) []zapcore.Field {
	var out []zapcore.Field
	for i, f := range fs {
		if f.Type != zapcore.StringType || len(f.String) <= sipgoMaxField {
			continue
		}
		if out == nil {
			out = append([]zapcore.Field(nil), fs...)
		}
		s := f.String[:sipgoMaxField]
		for len(s) > 0 && !utf8.ValidString(s) {
			s = s[:len(s)-1] // do not cut a rune in half
		}
		out[i].String = s + "…(truncated)"
	}
	if out == nil {
		return fs
	}
	return out
}
