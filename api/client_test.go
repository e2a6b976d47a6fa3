package api

import (
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"testing"
)

// TestClientErrors checks that a refused request keeps the daemon's
// status and one-line message, and that a daemon that does not answer is
// told apart from one that refuses (the CNI plugin maps them to different
// error codes).
func TestClientErrors(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "d.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte(`{"error":"container \"x\": not found"}`))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	_, err = NewClient(sock).Container("x")
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusNotFound || err.Error() != `container "x": not found` || !IsNotFound(err) {
		t.Fatalf("refused request: %v (%T)", err, err)
	}

	_, err = NewClient(filepath.Join(t.TempDir(), "none.sock")).Container("x")
	var ue *UnreachableError
	if !errors.As(err, &ue) || IsNotFound(err) {
		t.Fatalf("no daemon: %v (%T)", err, err)
	}
}
