// Package sdnotify sends service state notifications to systemd (the
// sd_notify protocol): one datagram of newline-separated VAR=VALUE
// assignments to the unix datagram socket named by $NOTIFY_SOCKET.
package sdnotify

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// SocketEnv names the environment variable systemd sets for a service
// with Type=notify.
const SocketEnv = "NOTIFY_SOCKET"

// Notification states.
const (
	Ready    = "READY=1"    // the service is up
	Stopping = "STOPPING=1" // the service is shutting down
)

// Notify sends state to the socket named by $NOTIFY_SOCKET. It returns
// false and no error when the variable is unset (not started by systemd,
// or not Type=notify). A socket name starting with "@" is in the
// abstract namespace.
func Notify(state string) (bool, error) {
	return NotifySocket(os.Getenv(SocketEnv), state)
}

// NotifySocket sends state to the unix datagram socket socket ("" means
// none: nothing is sent).
func NotifySocket(socket, state string) (bool, error) {
	if socket == "" {
		return false, nil
	}
	if !strings.HasPrefix(socket, "/") && !strings.HasPrefix(socket, "@") {
		return false, fmt.Errorf("%s %q: want an absolute path or @abstract name", SocketEnv, socket)
	}
	name := socket
	if name[0] == '@' {
		name = "\x00" + name[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return false, fmt.Errorf("%s %s: %w", SocketEnv, socket, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return false, fmt.Errorf("%s %s: %w", SocketEnv, socket, err)
	}
	return true, nil
}
