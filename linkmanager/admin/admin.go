package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// Admin is the local HTTP endpoint for health, status and metrics. It
// binds loopback by default: it tells anyone who can reach it the
// company's numbers and call activity.
type Admin struct {
	src  Source
	http *http.Server
	log  *zap.Logger
}

// apiError is how every handler fails; the wrapper writes it as JSON.
type apiError struct {
	Status  int    `json:"-"`
	Message string `json:"error"`
}

func (e *apiError) Error() string { return e.Message }

// New builds the admin server over src and the call counters m; Serve
// runs it on a listener the caller opened.
func New(src Source, m *Metrics, log *zap.Logger) *Admin {
	if log == nil {
		log = zap.NewNop()
	}
	a := &Admin{src: src, log: log.Named("admin")}
	reg := registry(src, m, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /healthz", a.handle(a.healthz))
	mux.Handle("GET /readyz", a.handle(a.readyz))
	mux.Handle("GET /status", a.handle(a.status))
	mux.Handle("GET /metrics", a.guard(promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: zap.NewStdLog(a.log)})))
	a.http = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          zap.NewStdLog(a.log),
	}
	return a
}

// Serve answers on l until Shutdown; it returns nil after Shutdown.
func (a *Admin) Serve(l net.Listener) error {
	if err := a.http.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops accepting and waits for requests in flight.
func (a *Admin) Shutdown(ctx context.Context) error { return a.http.Shutdown(ctx) }

// handle adapts an error-returning handler and applies guard.
func (a *Admin) handle(f func(http.ResponseWriter, *http.Request) error) http.Handler {
	return a.guard(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := f(w, r); err != nil {
			var ae *apiError
			if !errors.As(err, &ae) {
				a.log.Error("admin request failed", zap.String("path", r.URL.Path), zap.Error(err))
				ae = &apiError{Status: http.StatusInternalServerError, Message: "internal error"}
			}
			writeJSON(w, ae.Status, ae)
		}
	}))
}

// guard refuses browsers (DNS rebinding, cross-site requests): a request
// with an Origin header, or for a Host that is not an IP literal or
// localhost, never comes from curl, Prometheus or `linkmanager status`.
func (a *Admin) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 1<<10)
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.Trim(host, "[]")
		if r.Header.Get("Origin") != "" || (net.ParseIP(host) == nil && host != "localhost") {
			writeJSON(w, http.StatusForbidden, &apiError{Message: "forbidden: use an IP address or localhost, not a browser"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (a *Admin) healthz(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	return nil
}

func (a *Admin) readyz(w http.ResponseWriter, r *http.Request) error {
	if ok, why := a.src.Ready(); !ok {
		return &apiError{Status: http.StatusServiceUnavailable, Message: why}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	return nil
}

func (a *Admin) status(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, status(a.src.Snapshot()))
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

var _ prometheus.Collector = collector{}
