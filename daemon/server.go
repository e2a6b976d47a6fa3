package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"

	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/api"
)

// notFoundError marks errors answered with 404.
type notFoundError struct{ msg string }

func (e notFoundError) Error() string { return e.msg }

func notFound(format string, args ...any) error {
	return notFoundError{fmt.Sprintf(format, args...)}
}

// maxRequestBody bounds API request bodies.
const maxRequestBody = 1 << 20

// Handler returns the API's HTTP handler (see package api for the routes).
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/networks", func(w http.ResponseWriter, r *http.Request) {
		reply(w, d.Networks(), nil)
	})
	mux.HandleFunc("POST /v1/networks", func(w http.ResponseWriter, r *http.Request) {
		var req api.NetworkCreateRequest
		if err := decode(r, &req); err != nil {
			fail(w, err)
			return
		}
		n, err := d.CreateNetwork(req)
		reply(w, n, err)
	})
	mux.HandleFunc("GET /v1/networks/{name}", func(w http.ResponseWriter, r *http.Request) {
		n, err := d.Network(r.PathValue("name"))
		reply(w, n, err)
	})
	mux.HandleFunc("DELETE /v1/networks/{name}", func(w http.ResponseWriter, r *http.Request) {
		reply(w, struct{}{}, d.RemoveNetwork(r.PathValue("name")))
	})
	mux.HandleFunc("PATCH /v1/networks/{name}", func(w http.ResponseWriter, r *http.Request) {
		var req api.NetworkUpdateRequest
		if err := decode(r, &req); err != nil {
			fail(w, err)
			return
		}
		n, err := d.UpdateNetwork(r.PathValue("name"), req)
		reply(w, n, err)
	})
	mux.HandleFunc("GET /v1/nodes", func(w http.ResponseWriter, r *http.Request) {
		reply(w, d.Nodes(), nil)
	})
	mux.HandleFunc("GET /v1/networks/{name}/fdb", func(w http.ResponseWriter, r *http.Request) {
		f, err := d.FDB(r.PathValue("name"))
		reply(w, f, err)
	})
	mux.HandleFunc("GET /v1/endpoints", func(w http.ResponseWriter, r *http.Request) {
		reply(w, d.Endpoints(), nil)
	})
	mux.HandleFunc("POST /v1/endpoints", func(w http.ResponseWriter, r *http.Request) {
		var req api.AttachRequest
		if err := decode(r, &req); err != nil {
			fail(w, err)
			return
		}
		ep, err := d.Attach(req)
		reply(w, ep, err)
	})
	mux.HandleFunc("DELETE /v1/containers/{name}/endpoints", func(w http.ResponseWriter, r *http.Request) {
		reply(w, struct{}{}, d.Detach(r.PathValue("name"), r.URL.Query().Get("network")))
	})
	mux.HandleFunc("GET /v1/containers", func(w http.ResponseWriter, r *http.Request) {
		reply(w, d.Containers(), nil)
	})
	mux.HandleFunc("GET /v1/containers/{name}", func(w http.ResponseWriter, r *http.Request) {
		c, err := d.Container(r.PathValue("name"))
		reply(w, c, err)
	})
	mux.HandleFunc("DELETE /v1/containers/{name}", func(w http.ResponseWriter, r *http.Request) {
		reply(w, struct{}{}, d.RemoveContainer(r.PathValue("name")))
	})
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, r *http.Request) {
		reply(w, d.Stats(), nil)
	})
	mux.HandleFunc("GET /v1/keys", func(w http.ResponseWriter, r *http.Request) {
		reply(w, d.Keys(), nil)
	})
	mux.HandleFunc("POST /v1/keys/rotate", func(w http.ResponseWriter, r *http.Request) {
		k, err := d.RotateKey(r.Context())
		reply(w, k, err)
	})
	mux.HandleFunc("GET /v1/keys/export", func(w http.ResponseWriter, r *http.Request) {
		if f := r.URL.Query().Get("format"); f != "wireshark" {
			fail(w, badRequest{fmt.Errorf("key export: format %q: want wireshark", f)})
			return
		}
		if uid, ok := r.Context().Value(peerUIDKey{}).(uint32); !ok || uid != 0 {
			fail(w, forbidden{errors.New("key export: root only")})
			return
		}
		s, err := d.ExportWireshark()
		reply(w, api.KeyExport{ESPSA: s}, err)
	})
	return mux
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

func reply(w http.ResponseWriter, v any, err error) {
	if err != nil {
		fail(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, err error) {
	code := http.StatusConflict
	var nf notFoundError
	var br badRequest
	var fb forbidden
	switch {
	case errors.As(err, &fb):
		code = http.StatusForbidden
	case errors.As(err, &nf):
		code = http.StatusNotFound
	case errors.As(err, &br):
		code = http.StatusBadRequest
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(api.Error{Error: err.Error()})
}
