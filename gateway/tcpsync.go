package gateway

import (
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// Cluster-wide TCP initial sequence numbers and timestamps.
//
// With client-ip=preserve, the backend's kernel sees every ingress host's
// connection as one from the client's own address and port. After the
// backend closes first, its TIME-WAIT socket for (client, backend) takes a
// new SYN of the same 4-tuple only if the SYN's TCP timestamp is newer
// than the last one it saw, or (without timestamps) its sequence number is
// above the old connection's (Linux tcp_timewait_state_process; a SYN
// whose timestamp is older is dropped as PAWS, TcpExtPAWSTimewait, and
// the connection waits for its SYN retransmission). A gVisor stack derives
// a connection's timestamp offset (from its addresses) and ISN (from its
// 4-tuple) with secrets of its own, on a clock of its own, so the client's
// next connection through another host's gateway got a timestamp and ISN
// unrelated to the previous one's: older about half the time.
//
// So every gateway of the cluster derives both secrets from one secret
// shared by the cluster (TCPSecret, from the cluster key) and runs its TCP
// on wall-clock time (wallClock): the same 4-tuple gets the same timestamp
// offset and ISN hash on every host, and the values grow with time as
// one host's would, as long as the hosts' clocks agree (NTP: within
// milliseconds; a client reusing its port sooner than the hosts' clock
// difference can still meet PAWS).

// tcpSecretInfo is the HKDF label of TCPSecret.
const tcpSecretInfo = "vxmesh gateway tcp isn and timestamp secret v1"

// tcpSecretLen is the length of TCPSecret's result: gVisor's TCP reads a
// 16-byte ISN secret then a 16-byte timestamp-offset secret.
const tcpSecretLen = 32

// TCPSecret derives from the cluster key the secret from which every
// gateway of the cluster derives its TCP ISNs and timestamp offsets
// (EgressConfig.TCPSecret): HKDF-SHA256 with its own label, so the key
// itself never reaches a stack and the result tells nothing of it.
func TCPSecret(clusterKey []byte) ([]byte, error) {
	if len(clusterKey) == 0 {
		return nil, fmt.Errorf("tcp secret: empty cluster key")
	}
	return hkdf.Key(sha256.New, clusterKey, nil, tcpSecretInfo, tcpSecretLen)
}

// secretRNG is a gateway stack's SecureRNG: crypto/rand, except while a
// TCP protocol is built (tcpWithSecret), when it first serves the cluster's
// secret, which gVisor's TCP reads as its ISN and timestamp secrets.
type secretRNG struct {
	mu   sync.Mutex
	next []byte
}

// Read fills p, from the armed secret first.
func (r *secretRNG) Read(p []byte) (int, error) {
	r.mu.Lock()
	n := copy(p, r.next)
	r.next = r.next[n:]
	r.mu.Unlock()
	if n == len(p) {
		return n, nil
	}
	m, err := rand.Read(p[n:])
	return n + m, err
}

// arm makes the next reads return secret.
func (r *secretRNG) arm(secret []byte) {
	r.mu.Lock()
	r.next = secret
	r.mu.Unlock()
}

// disarm ends the secret's reads and returns how many of its bytes were
// not read.
func (r *secretRNG) disarm() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.next)
	r.next = nil
	return n
}

// tcpWithSecret is tcp.NewProtocol whose ISN and timestamp secrets are
// secret (tcpSecretLen bytes, the first reads of the stack's SecureRNG the
// protocol makes); *unread counts the secret's bytes it did not read (not
// 0: this gVisor reads its secrets otherwise, and New fails).
func tcpWithSecret(rng *secretRNG, secret []byte, unread *int) stack.TransportProtocolFactory {
	return func(s *stack.Stack) stack.TransportProtocol {
		rng.arm(secret)
		p := tcp.NewProtocol(s)
		*unread = rng.disarm()
		return p
	}
}

// wallClock is a gateway stack's clock: tcpip's standard clock (Now,
// timers) whose monotonic reading is wall-clock time, nanoseconds since
// the Unix epoch, so that TCP timestamps and ISNs, which gVisor computes
// from it, agree across hosts. It stays monotonic: it is the monotonic
// clock plus the largest offset to the wall clock seen so far, so a wall
// clock stepped forward moves it forward, and one stepped back leaves it
// running on, ahead of the wall clock by the step, rather than going back
// or standing still.
type wallClock struct {
	tcpip.Clock
	base time.Time    // the monotonic reference
	off  atomic.Int64 // the largest wall - monotonic seen, nanoseconds
}

func newWallClock() *wallClock {
	c := &wallClock{Clock: tcpip.NewStdClock(), base: time.Now()}
	c.off.Store(c.base.UnixNano())
	return c
}

// NowMonotonic implements tcpip.Clock.
func (c *wallClock) NowMonotonic() tcpip.MonotonicTime {
	now := time.Now()
	return tcpip.MonotonicTime{}.Add(time.Duration(c.reading(now.UnixNano(), int64(now.Sub(c.base)))))
}

// reading is the clock's reading for wall-clock time wall (Unix
// nanoseconds) and monotonic time mono (nanoseconds since base), read
// together.
func (c *wallClock) reading(wall, mono int64) int64 {
	d := wall - mono
	for {
		off := c.off.Load()
		if d <= off {
			return mono + off
		}
		if c.off.CompareAndSwap(off, d) {
			return mono + d
		}
	}
}
