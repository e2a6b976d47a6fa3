package sdnotify

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

// listen makes a fake systemd notification socket.
func listen(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func recv(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

func TestNotifySendsStateToNotifySocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	c := listen(t, sock)
	t.Setenv(SocketEnv, sock)
	for _, st := range []string{Ready, Stopping} {
		sent, err := Notify(st)
		if err != nil || !sent {
			t.Fatalf("Notify(%q) = %v, %v", st, sent, err)
		}
		if got := recv(t, c); got != st {
			t.Fatalf("socket got %q, want %q", got, st)
		}
	}
}

func TestNotifyAbstractSocket(t *testing.T) {
	name := "@vxmesh-sdnotify-test-" + filepath.Base(t.TempDir())
	c := listen(t, "\x00"+name[1:])
	if sent, err := NotifySocket(name, Ready); err != nil || !sent {
		t.Fatalf("NotifySocket(%q) = %v, %v", name, sent, err)
	}
	if got := recv(t, c); got != Ready {
		t.Fatalf("socket got %q, want %q", got, Ready)
	}
}

func TestNotifyWithoutSocket(t *testing.T) {
	t.Setenv(SocketEnv, "")
	if sent, err := Notify(Ready); sent || err != nil {
		t.Fatalf("Notify without %s = %v, %v; want false, nil", SocketEnv, sent, err)
	}
	if _, err := NotifySocket("relative/path", Ready); err == nil {
		t.Fatal("relative socket path accepted")
	}
	if _, err := NotifySocket(filepath.Join(t.TempDir(), "missing"), Ready); err == nil {
		t.Fatal("missing socket: no error")
	}
}
