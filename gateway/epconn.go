package gateway

import (
	"bytes"
	"errors"
	"io"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/waiter"
)

// epConn is a flow's side in the network: the stack's TCP endpoint, read
// and written directly, as splice needs it. Unlike gonet's TCPConn it
// has no deadlines, and its waiter entries are registered once, when the
// flow starts, not for every read or write that has to wait: a short
// connection costs no timer, channel or registration beyond those two.
type epConn struct {
	ep tcpip.Endpoint
	wq *waiter.Queue
	// readable and writable are notified of the endpoint's read and
	// write readiness (a reset or an error wakes both).
	readable, writable    <-chan struct{}
	readEntry, writeEntry waiter.Entry
	r                     bytes.Reader // Write's reader of its slice
}

// newEPConn registers c's waiter entries; Close unregisters them.
func newEPConn(wq *waiter.Queue, ep tcpip.Endpoint) *epConn {
	c := &epConn{ep: ep, wq: wq}
	c.readEntry, c.readable = waiter.NewChannelEntry(waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr)
	c.writeEntry, c.writable = waiter.NewChannelEntry(waiter.WritableEvents | waiter.EventHUp | waiter.EventErr)
	wq.EventRegister(&c.readEntry)
	wq.EventRegister(&c.writeEntry)
	return c
}

// Read reads what the endpoint received, waiting for some; the peer's
// FIN is io.EOF. When the FIN is already in, the read that returns the
// last data returns io.EOF with it, so the caller knows the data is the
// last (copyConn's writeLast).
func (c *epConn) Read(b []byte) (int, error) {
	for {
		w := tcpip.SliceWriter(b)
		res, err := c.ep.Read(&w, tcpip.ReadOptions{})
		switch err.(type) {
		case nil:
			n := res.Count
			if n > 0 && n < len(b) {
				// All that was received: is the FIN behind it?
				w = tcpip.SliceWriter(b[n:])
				res, err = c.ep.Read(&w, tcpip.ReadOptions{})
				n += res.Count
				if _, ok := err.(*tcpip.ErrClosedForReceive); ok {
					c.ep.ModerateRecvBuf(n)
					return n, io.EOF
				}
			}
			if n > 0 {
				// Receive buffer auto-tuning, as gonet does.
				c.ep.ModerateRecvBuf(n)
			}
			return n, nil
		case *tcpip.ErrWouldBlock:
			<-c.readable
		case *tcpip.ErrClosedForReceive:
			return 0, io.EOF
		default:
			return 0, errors.New(err.String())
		}
	}
}

// Write writes all of b, waiting for room as needed.
func (c *epConn) Write(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		c.r.Reset(b[n:])
		k, err := c.ep.Write(&c.r, tcpip.WriteOptions{})
		n += int(k)
		switch err.(type) {
		case nil:
		case *tcpip.ErrWouldBlock:
			// The endpoint notifies when room frees up; a notification
			// left from before only costs one more try.
			<-c.writable
		default:
			return n, errors.New(err.String())
		}
	}
	return n, nil
}

// CloseWrite sends a FIN (a half-close).
func (c *epConn) CloseWrite() error {
	if err := c.ep.Shutdown(tcpip.ShutdownWrite); err != nil {
		return errors.New(err.String())
	}
	return nil
}

// Close closes the endpoint and unregisters c's waiter entries.
func (c *epConn) Close() error {
	c.wq.EventUnregister(&c.readEntry)
	c.wq.EventUnregister(&c.writeEntry)
	c.ep.Close()
	return nil
}
