package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/api"
)

// notFoundError marks errors answered with 404.
type notFoundError struct{ msg string }

func (e notFoundError) Error() string { return e.msg }

func notFound(format string, args ...any) error {
	return notFoundError{fmt.Sprintf(format, args...)}
}

// invalidError marks errors of bad requests (answered with 400).
type invalidError struct{ error }

func (e invalidError) Unwrap() error { return e.error }

func invalid(format string, args ...any) error {
	return invalidError{fmt.Errorf(format, args...)}
}

// asInvalid marks err invalid (400) unless it already says what it is.
func asInvalid(err error) error {
	var cf conflictError
	var nf notFoundError
	var inv invalidError
	if err == nil || errors.As(err, &cf) || errors.As(err, &nf) || errors.As(err, &inv) {
		return err
	}
	return invalidError{err}
}

// conflictError marks requests that conflict with the current state:
// already exists, in use (answered with 409).
type conflictError struct{ error }

func (e conflictError) Unwrap() error { return e.error }

// conflict formats like fmt.Errorf (%w wraps) and marks the result a
// conflict.
func conflict(format string, args ...any) error {
	return conflictError{fmt.Errorf(format, args...)}
}

// maxRequestBody bounds API request bodies.
const maxRequestBody = 1 << 20

// readRequestFirst reads the whole request body within the server's
// ReadTimeout, then lifts the connection's read deadline: a client that
// stalls while sending is cut off, while a handler that takes long (`rm`
// waiting for processes to exit, `key rotate` waiting for the cluster)
// keeps its connection and its context.
func readRequestFirst(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBody+1))
		if err != nil {
			fail(w, badRequest{fmt.Errorf("request body: %w", err)})
			return
		}
		if len(b) > maxRequestBody {
			fail(w, tooLarge{fmt.Errorf("request body: larger than %d bytes", maxRequestBody)})
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		http.NewResponseController(w).SetReadDeadline(time.Time{})
		h.ServeHTTP(w, r)
	})
}

// Handler returns the API's HTTP handler (see package api for the routes).
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/networks", listed(d.Networks))
	mux.HandleFunc("POST /v1/networks", withBody(d.CreateNetwork))
	mux.HandleFunc("GET /v1/networks/{name}", named(d.Network))
	mux.HandleFunc("DELETE /v1/networks/{name}", namedDone(d.RemoveNetwork))
	mux.HandleFunc("PATCH /v1/networks/{name}", namedWithBody(d.UpdateNetwork))
	mux.HandleFunc("GET /v1/services", listed(d.Services))
	mux.HandleFunc("POST /v1/services", withBody(d.CreateService))
	mux.HandleFunc("GET /v1/services/{name}", named(d.Service))
	mux.HandleFunc("PATCH /v1/services/{name}", namedWithBody(d.UpdateService))
	mux.HandleFunc("DELETE /v1/services/{name}", namedDone(d.RemoveService))
	mux.HandleFunc("GET /v1/nodes", listed(d.Nodes))
	mux.HandleFunc("GET /v1/claim-waits", listed(d.ClaimWaits))
	mux.HandleFunc("GET /v1/networks/{name}/fdb", named(d.FDB))
	mux.HandleFunc("GET /v1/endpoints", listed(d.Endpoints))
	mux.HandleFunc("POST /v1/endpoints", withBody(d.Attach))
	mux.HandleFunc("DELETE /v1/containers/{name}/endpoints", func(w http.ResponseWriter, r *http.Request) {
		reply(w, struct{}{}, d.Detach(r.PathValue("name"), r.URL.Query().Get("network")))
	})
	mux.HandleFunc("GET /v1/containers", listed(d.Containers))
	mux.HandleFunc("GET /v1/containers/{name}", func(w http.ResponseWriter, r *http.Request) {
		get := d.Container
		if r.URL.Query().Get("processes") == "false" {
			get = d.ContainerNamespace
		}
		c, err := get(r.PathValue("name"))
		reply(w, c, err)
	})
	mux.HandleFunc("POST /v1/containers/{name}/main-process", namedWithBody(func(name string, p api.MainProcess) (struct{}, error) {
		return struct{}{}, d.SetMainProcess(name, p)
	}))
	mux.HandleFunc("POST /v1/containers/{name}/stop", namedWithBody(func(name string, req api.StopRequest) (struct{}, error) {
		return struct{}{}, d.StopContainer(name, req)
	}))
	mux.HandleFunc("POST /v1/containers/{name}/start", namedDone(d.StartContainer))
	mux.HandleFunc("POST /v1/containers/{name}/restart", namedWithBody(func(name string, req api.StopRequest) (struct{}, error) {
		return struct{}{}, d.RestartContainer(name, req)
	}))
	mux.HandleFunc("DELETE /v1/containers/{name}", namedDone(d.RemoveContainer))
	mux.HandleFunc("GET /v1/stats", listed(d.Stats))
	mux.HandleFunc("GET /v1/capture", d.serveCapture)
	mux.HandleFunc("POST /v1/trace", withBody(d.Trace))
	mux.HandleFunc("GET /v1/keys", listed(d.Keys))
	mux.HandleFunc("POST /v1/keys/rotate", func(w http.ResponseWriter, r *http.Request) {
		k, err := d.RotateKey(r.Context())
		reply(w, k, err)
	})
	mux.HandleFunc("GET /v1/keys/export", d.serveKeyExport)
	return jsonUnrouted(mux)
}

// jsonUnrouted answers a request that matches no route (404) or none
// for its method (405, with the mux's Allow header) with an api.Error
// body, as every other refusal, instead of the mux's plain text.
func jsonUnrouted(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		rec := &statusOnly{header: http.Header{}, code: http.StatusOK}
		h.ServeHTTP(rec, r)
		if allow := rec.header.Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
		}
		msg := fmt.Sprintf("%s %s: no such API path", r.Method, r.URL.Path)
		if rec.code == http.StatusMethodNotAllowed {
			msg = fmt.Sprintf("%s %s: method not allowed (allowed: %s)", r.Method, r.URL.Path, rec.header.Get("Allow"))
		}
		failCode(w, rec.code, msg)
	})
}

// statusOnly is a ResponseWriter that keeps the status and headers the
// mux's own unrouted reply sets and drops its body.
type statusOnly struct {
	header http.Header
	code   int
}

func (s *statusOnly) Header() http.Header         { return s.header }
func (s *statusOnly) Write(b []byte) (int, error) { return len(b), nil }
func (s *statusOnly) WriteHeader(code int)        { s.code = code }

// listed is the handler of a request that names nothing and cannot fail:
// it replies with what get returns.
func listed[R any](get func() R) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		reply(w, get(), nil)
	}
}

// named is the handler of a request for the object the path names.
func named[R any](get func(name string) (R, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v, err := get(r.PathValue("name"))
		reply(w, v, err)
	}
}

// namedDone is the handler of a request that acts on the object the path
// names and replies with no body but its error.
func namedDone(do func(name string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		reply(w, struct{}{}, do(r.PathValue("name")))
	}
}

// withBody is the handler of a request whose JSON body is a T: a body
// that does not decode is refused before call.
func withBody[T, R any](call func(req T) (R, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req T
		if err := decode(r, &req); err != nil {
			fail(w, err)
			return
		}
		v, err := call(req)
		reply(w, v, err)
	}
}

// namedWithBody is withBody for a request on the object the path names.
func namedWithBody[T, R any](call func(name string, req T) (R, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req T
		if err := decode(r, &req); err != nil {
			fail(w, err)
			return
		}
		v, err := call(r.PathValue("name"), req)
		reply(w, v, err)
	}
}

// serveKeyExport answers GET /v1/keys/export: the ESP keys in Wireshark's
// format, to root only.
func (d *Daemon) serveKeyExport(w http.ResponseWriter, r *http.Request) {
	if f := r.URL.Query().Get("format"); f != "wireshark" {
		fail(w, badRequest{fmt.Errorf("format %q: want wireshark", f)})
		return
	}
	if uid, ok := r.Context().Value(peerUIDKey{}).(uint32); !ok || uid != 0 {
		fail(w, forbidden{errors.New("root only")})
		return
	}
	s, err := d.ExportWireshark()
	reply(w, api.KeyExport{ESPSA: s}, err)
}

// peerUIDKey is the request context key of the uid of the process at the
// other end of the API socket (SO_PEERCRED), set by Serve.
type peerUIDKey struct{}

// withPeerUID is the http.Server ConnContext of the API: it records the
// peer's uid so that requests that reveal keys can be refused to non-root
// callers even if the socket's mode was loosened.
func withPeerUID(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	uid := uint32(1<<32 - 1) // unknown: not root
	rc.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			uid = cred.Uid
		}
	})
	return context.WithValue(ctx, peerUIDKey{}, uid)
}

// forbidden marks errors answered with 403.
type forbidden struct{ error }

// decode reads a JSON request body strictly: unknown fields and trailing
// data are errors.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest{fmt.Errorf("request body: %w", err)}
	}
	if dec.More() {
		return badRequest{errors.New("request body: trailing data after the JSON object")}
	}
	return nil
}

type badRequest struct{ error }

// tooLarge is a request whose body exceeds maxRequestBody (413).
type tooLarge struct{ error }

func reply(w http.ResponseWriter, v any, err error) {
	if err != nil {
		fail(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// fail answers err: 400 for invalid requests, 403, 404 for unknown
// objects, 409 for conflicts with the current state (already exists, in
// use) and 500 for everything else (a failed save, a kernel error).
func fail(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	var nf notFoundError
	var br badRequest
	var inv invalidError
	var cf conflictError
	var fb forbidden
	var tl tooLarge
	switch {
	case errors.As(err, &fb):
		code = http.StatusForbidden
	case errors.As(err, &nf):
		code = http.StatusNotFound
	case errors.As(err, &br), errors.As(err, &inv):
		code = http.StatusBadRequest
	case errors.As(err, &cf):
		code = http.StatusConflict
	case errors.As(err, &tl):
		code = http.StatusRequestEntityTooLarge
	}
	failCode(w, code, err.Error())
}

// failCode writes an api.Error reply with status code.
func failCode(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(api.Error{Error: msg})
}
