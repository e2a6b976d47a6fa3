package api

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
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

// TestClientSaysTheDaemonHungUp: a daemon that closes the connection
// before it answers (stopped during a long stop -t) is told as such, not
// as `Post "http://vxmesh/...": EOF`, and is still unreachable (a monitor
// asks again).
func TestClientSaysTheDaemonHungUp(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "d.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			http.ReadRequest(bufio.NewReader(conn))
			conn.Close()
		}
	}()
	err = NewClient(sock).StopContainer("c1", StopRequest{})
	var ue *UnreachableError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "closed the connection without answering") {
		t.Fatalf("daemon hung up: %v (%T)", err, err)
	}
}

func TestParseTraceTarget(t *testing.T) {
	for _, tc := range []struct {
		in    string
		proto string
		port  uint16
		ok    bool
	}{
		{"10.0.1.5", "icmp", 0, true},
		{"10.0.1.5:80", "tcp", 80, true},
		{"10.0.1.5:53/udp", "udp", 53, true},
		{"10.0.1.5:80/tcp", "tcp", 80, true},
		{"10.0.1.5:0/tcp", "", 0, false},
		{"10.0.1.5:70000", "", 0, false},
		{"10.0.1.5:80/sctp", "", 0, false},
		{"web:80", "", 0, false},
		{"::1", "", 0, false},
	} {
		ip, proto, port, err := ParseTraceTarget(tc.in)
		if (err == nil) != tc.ok || tc.ok && (ip.String() != "10.0.1.5" || proto != tc.proto || port != tc.port) {
			t.Errorf("%q: %v %q %d %v", tc.in, ip, proto, port, err)
		}
	}
}

func FuzzParseTraceTarget(f *testing.F) {
	for _, s := range []string{"10.0.1.5", "10.0.1.5:80", "10.0.1.5:53/udp", "1.2.3.4:0/tcp", ":/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ip, proto, port, err := ParseTraceTarget(s)
		if err != nil {
			return
		}
		if !ip.Is4() || proto == "icmp" && port != 0 || proto != "icmp" && port == 0 {
			t.Fatalf("%q: %v %q %d", s, ip, proto, port)
		}
	})
}

// TestCloseIdleConnectionsLeavesDaemonNoConnection: after a report and
// CloseIdleConnections (as a container's monitor does, which lives as long
// as the container), the daemon's side of the connection is closed, so it
// holds no connection per idle container.
func TestCloseIdleConnectionsLeavesDaemonNoConnection(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "d.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	open := 0
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }),
		ConnState: func(_ net.Conn, st http.ConnState) {
			mu.Lock()
			defer mu.Unlock()
			switch st {
			case http.StateNew:
				open++
			case http.StateClosed, http.StateHijacked:
				open--
			}
		},
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	c := NewClient(sock)
	if err := c.MainProcess("web", MainProcess{PID: 42}); err != nil {
		t.Fatal(err)
	}
	c.CloseIdleConnections()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := open
		mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon still holds %d connection(s) from an idle client", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestClientSendsAgainOnAConnectionClosedIdle: the daemon closes a
// kept-alive connection that was idle for its idle timeout just as the
// client sends a request on it, which it does not read. The client sends
// the request (a POST) again on a new connection and gets the answer, not
// an error.
func TestClientSendsAgainOnAConnectionClosedIdle(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "d.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var mu sync.Mutex
	var answered []string // connection number and body of each request answered
	go func() {
		for n := 1; ; n++ {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				br := bufio.NewReader(conn)
				for i := 0; ; i++ {
					if n == 1 && i == 1 {
						// The next request has arrived: the idle
						// timeout closes the connection unread.
						br.Peek(1)
						return
					}
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					body, _ := io.ReadAll(req.Body)
					mu.Lock()
					answered = append(answered, fmt.Sprintf("%d %s", n, body))
					mu.Unlock()
					if _, err := io.WriteString(conn, "HTTP/1.1 204 No Content\r\n\r\n"); err != nil {
						return
					}
				}
			}()
		}
	}()
	c := NewClient(sock)
	for _, pid := range []int{41, 42} {
		if err := c.MainProcess("web", MainProcess{PID: pid}); err != nil {
			t.Fatalf("POST with PID %d: %v", pid, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{`1 {"pid":41}`, `2 {"pid":42}`}; !slices.Equal(answered, want) {
		t.Fatalf("the daemon answered %q, want %q", answered, want)
	}
}
