package sandbox

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestEndTimeWait: the server's TIME-WAIT socket of a fast-path
// connection it closed first is ended, and only that: a live connection
// of the same addresses is left alone, and a second call finds nothing.
func TestEndTimeWait(t *testing.T) {
	requireRoot(t)
	ns := fastPathNetns(t, "10.9.0.6/24")
	if err := EnableFastPath(ns); err != nil {
		t.Fatal(err)
	}
	ln := listenIn(t, ns, "10.9.0.6:80")
	fs, err := NewFastSockets(ns, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	server := netip.MustParseAddrPort("10.9.0.6:80")
	client := netip.MustParseAddrPort("203.0.113.7:40002")
	c, err := fastDial(t, fs, net.TCPAddrFromAddrPort(client), net.TCPAddrFromAddrPort(server))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	ln.SetDeadline(time.Now().Add(3 * time.Second))
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	// Live: not ended.
	if ended, err := fs.EndTimeWait(server, client); ended || err != nil {
		t.Fatalf("EndTimeWait of a live connection: %v, %v; want false, nil", ended, err)
	}
	s.Write([]byte("x"))
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != nil {
		t.Fatalf("the live connection after EndTimeWait: %v", err)
	}
	// The server closes first, then the client: the server's side is in
	// TIME-WAIT.
	s.Close()
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("no EOF after the server's close")
	}
	c.Close()
	var ended bool
	for deadline := time.Now().Add(3 * time.Second); !ended && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if ended, err = fs.EndTimeWait(server, client); err != nil {
			t.Fatal(err)
		}
	}
	if !ended {
		t.Fatal("the server's TIME-WAIT socket was not ended")
	}
	if ended, err := fs.EndTimeWait(server, client); ended || err != nil {
		t.Fatalf("EndTimeWait again: %v, %v; want false, nil", ended, err)
	}
	fs.Close()
	if _, err := fs.EndTimeWait(server, client); err == nil {
		t.Fatal("EndTimeWait after Close: no error")
	}
}
