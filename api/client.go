package api

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"syscall"
	"time"
)

// Client talks to a local daemon over its unix socket.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the daemon listening on socket; an empty
// socket means $VXMESH_SOCKET or DefaultSocket.
func NewClient(socket string) *Client {
	if socket == "" {
		socket = os.Getenv(SocketEnv)
	}
	if socket == "" {
		socket = DefaultSocket
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		IdleConnTimeout: ClientIdleTimeout,
	}
	return &Client{socket: socket, http: &http.Client{Transport: tr, Timeout: 2 * time.Minute}}
}

// ClientIdleTimeout is how long a Client keeps an idle connection to the
// daemon for the next request: well below the daemon's own idle timeout
// (2 minutes), so that a long-lived client does not send a request on a
// connection the daemon is closing at that moment.
const ClientIdleTimeout = 30 * time.Second

// IdempotencyHeader is the header of the unique key every Client request
// carries. With it Go's HTTP client sends a request again, once, on a new
// connection when the kept-alive connection it went out on was closed
// before any answer (net/http retries GET requests so, and any request
// with such a header). The daemon closes a connection idle for its idle
// timeout without reading what arrives as it closes: the request was not
// made, and a POST failed with "EOF" or "connection reset by peer"
// (a long-lived client sending just then, e.g. the Docker plugin, or the
// CLI on a daemon shutting down). The daemon does not look at the key;
// a request whose handler panicked (the server drops the connection
// unanswered) may be made twice.
const IdempotencyHeader = "Idempotency-Key"

// StatusError is the daemon's answer to a refused request: the HTTP status
// (400 invalid, 403, 404 unknown object, 409 conflict with the current
// state, 500) and the daemon's one-line message, which is all Error shows.
type StatusError struct {
	Code int
	Msg  string
}

// Error implements error.
func (e *StatusError) Error() string { return e.Msg }

// UnreachableError is a request that got no answer from the daemon: no
// socket, connection refused or reset, permission denied, timeout.
type UnreachableError struct {
	Msg string
	Err error
}

// Error implements error.
func (e *UnreachableError) Error() string { return e.Msg }

// Unwrap returns the error underneath, for errors.Is and errors.As.
func (e *UnreachableError) Unwrap() error { return e.Err }

// IsNotFound reports whether err is the daemon's "not found" (404) answer.
func IsNotFound(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

// Socket is the path the client connects to.
func (c *Client) Socket() string { return c.socket }

// do sends a request and decodes a JSON answer into out (unless nil).
func (c *Client) do(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://vxmesh"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set(IdempotencyHeader, rand.Text())
	resp, err := c.http.Do(req)
	if err != nil {
		return c.unreachable(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("daemon at %s: %w", c.socket, err)
	}
	if resp.StatusCode/100 != 2 {
		return c.statusError(resp, data)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("daemon at %s: bad answer: %w", c.socket, err)
	}
	return nil
}

// CreateNetwork creates a network.
func (c *Client) CreateNetwork(req NetworkCreateRequest) (Network, error) {
	var n Network
	return n, c.do(http.MethodPost, "/v1/networks", req, &n)
}

// Networks lists the networks.
func (c *Client) Networks() ([]Network, error) {
	var n []Network
	return n, c.do(http.MethodGet, "/v1/networks", nil, &n)
}

// Network returns one network with its endpoints.
func (c *Client) Network(name string) (Network, error) {
	var n Network
	return n, c.do(http.MethodGet, "/v1/networks/"+url.PathEscape(name), nil, &n)
}

// RemoveNetwork deletes a network.
func (c *Client) RemoveNetwork(name string) error {
	return c.do(http.MethodDelete, "/v1/networks/"+url.PathEscape(name), nil, nil)
}

// FDB returns a network's forwarding database.
func (c *Client) FDB(network string) ([]FDBEntry, error) {
	var f []FDBEntry
	return f, c.do(http.MethodGet, "/v1/networks/"+url.PathEscape(network)+"/fdb", nil, &f)
}

// Attach attaches a namespace (or a new container) to a network.
func (c *Client) Attach(req AttachRequest) (Endpoint, error) {
	var e Endpoint
	return e, c.do(http.MethodPost, "/v1/endpoints", req, &e)
}

// Detach removes a container's endpoint on network (its only one if
// network is empty).
func (c *Client) Detach(name, network string) error {
	p := "/v1/containers/" + url.PathEscape(name) + "/endpoints"
	if network != "" {
		p += "?network=" + url.QueryEscape(network)
	}
	return c.long().do(http.MethodDelete, p, nil, nil)
}

// Endpoints lists the endpoints of the host.
func (c *Client) Endpoints() ([]Endpoint, error) {
	var e []Endpoint
	return e, c.do(http.MethodGet, "/v1/endpoints", nil, &e)
}

// Containers lists the containers of the host.
func (c *Client) Containers() ([]Container, error) {
	var cs []Container
	return cs, c.do(http.MethodGet, "/v1/containers", nil, &cs)
}

// Container returns one container.
func (c *Client) Container(name string) (Container, error) {
	var ct Container
	return ct, c.do(http.MethodGet, "/v1/containers/"+url.PathEscape(name), nil, &ct)
}

// ContainerNamespace returns a container without its processes (PIDs nil,
// Status empty but for a stopped container's "exited N"): its namespace
// and State, found without the scan of every process on the host that
// listing its processes takes.
func (c *Client) ContainerNamespace(name string) (Container, error) {
	var ct Container
	return ct, c.do(http.MethodGet, "/v1/containers/"+url.PathEscape(name)+"?processes=false", nil, &ct)
}

// RemoveContainer removes a container. A backend of services first
// drains for their stop grace period, so the call may take that long.
func (c *Client) RemoveContainer(name string) error {
	return c.long().do(http.MethodDelete, "/v1/containers/"+url.PathEscape(name), nil, nil)
}

// CloseIdleConnections closes the client's idle keep-alive connections to
// the daemon. A long-lived caller that talks to the daemon rarely (the
// monitor of a container's main process) calls it after each exchange,
// so that the daemon does not hold a connection, a goroutine and its
// buffers per such caller.
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

// long is c without the request timeout, for calls that wait for a
// service's stop grace period.
func (c *Client) long() *Client {
	return &Client{socket: c.socket, http: &http.Client{Transport: c.http.Transport}}
}

// CreateService creates a service.
func (c *Client) CreateService(req ServiceCreateRequest) (Service, error) {
	var s Service
	return s, c.do(http.MethodPost, "/v1/services", req, &s)
}

// Services lists the services.
func (c *Client) Services() ([]Service, error) {
	var s []Service
	return s, c.do(http.MethodGet, "/v1/services", nil, &s)
}

// Service returns one service with its backends and this node's counters.
func (c *Client) Service(name string) (Service, error) {
	var s Service
	return s, c.do(http.MethodGet, "/v1/services/"+url.PathEscape(name), nil, &s)
}

// UpdateService changes a service.
func (c *Client) UpdateService(name string, req ServiceUpdateRequest) (Service, error) {
	var s Service
	return s, c.do(http.MethodPatch, "/v1/services/"+url.PathEscape(name), req, &s)
}

// RemoveService removes a service; its backends stop being backends.
func (c *Client) RemoveService(name string) error {
	return c.do(http.MethodDelete, "/v1/services/"+url.PathEscape(name), nil, nil)
}

// StopContainer stops a container made by run: SIGTERM to its processes,
// SIGKILL to those left after the request's timeout. Its restart policy
// does not start it again. The call lasts as long as the processes do.
func (c *Client) StopContainer(name string, req StopRequest) error {
	return c.long().do(http.MethodPost, "/v1/containers/"+url.PathEscape(name)+"/stop", req, nil)
}

// StartContainer starts a stopped container made by run again: its
// command in its namespace, with its addresses and published ports.
func (c *Client) StartContainer(name string) error {
	return c.do(http.MethodPost, "/v1/containers/"+url.PathEscape(name)+"/start", struct{}{}, nil)
}

// RestartContainer stops a container made by run (as StopContainer; a
// stopped one stays so) and starts it again.
func (c *Client) RestartContainer(name string, req StopRequest) error {
	return c.long().do(http.MethodPost, "/v1/containers/"+url.PathEscape(name)+"/restart", req, nil)
}

// MainProcess tells the daemon the PID of a container's main process, or
// its exit status (the container's monitor does, see `run -d`).
func (c *Client) MainProcess(container string, p MainProcess) error {
	return c.do(http.MethodPost, "/v1/containers/"+url.PathEscape(container)+"/main-process", p, nil)
}

// Stats returns the daemon's counters.
func (c *Client) Stats() (Stats, error) {
	var s Stats
	return s, c.do(http.MethodGet, "/v1/stats", nil, &s)
}

// UpdateNetwork changes a network's external VTEPs.
func (c *Client) UpdateNetwork(name string, req NetworkUpdateRequest) (Network, error) {
	var n Network
	return n, c.do(http.MethodPatch, "/v1/networks/"+url.PathEscape(name), req, &n)
}

// Nodes lists the cluster members.
func (c *Client) Nodes() ([]Node, error) {
	var n []Node
	return n, c.do(http.MethodGet, "/v1/nodes", nil, &n)
}

// ClaimWaits returns the nodes declared dead that a create on the daemon's
// host waits for (empty when none).
func (c *Client) ClaimWaits() ([]ClaimWait, error) {
	var w []ClaimWait
	return w, c.do(http.MethodGet, "/v1/claim-waits", nil, &w)
}

// Keys returns the state of the cluster's data keys (no key material).
func (c *Client) Keys() (Keys, error) {
	var k Keys
	return k, c.do(http.MethodGet, "/v1/keys", nil, &k)
}

// RotateKey forces a rotation of the data keys and returns the key state
// once the new key is primary on the daemon's node.
func (c *Client) RotateKey() (Keys, error) {
	var k Keys
	return k, c.do(http.MethodPost, "/v1/keys/rotate", nil, &k)
}

// ExportKeys returns the keys of the daemon's SAs as Wireshark esp_sa
// lines. The answer contains key material; the daemon serves it to root
// only.
func (c *Client) ExportKeys() (KeyExport, error) {
	var k KeyExport
	return k, c.do(http.MethodGet, "/v1/keys/export?format=wireshark", nil, &k)
}

// unreachable describes a request that got no answer.
func (c *Client) unreachable(err error) error {
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		return &UnreachableError{Msg: fmt.Sprintf("cannot reach the vxmesh daemon at %s: is `vxmesh daemon` running? (--socket or $%s)", c.socket, SocketEnv), Err: err}
	}
	if errors.Is(err, syscall.EACCES) {
		return &UnreachableError{Msg: fmt.Sprintf("cannot reach the vxmesh daemon at %s: permission denied (the API is for root)", c.socket), Err: err}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) {
		return &UnreachableError{Msg: fmt.Sprintf("the vxmesh daemon at %s closed the connection without answering (did it stop or restart?): the request may have been carried out in part", c.socket), Err: err}
	}
	return &UnreachableError{Msg: fmt.Sprintf("daemon at %s: %v", c.socket, err), Err: err}
}

// statusError is the error of a refused request whose body is data.
func (c *Client) statusError(resp *http.Response, data []byte) error {
	var e Error
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		return &StatusError{Code: resp.StatusCode, Msg: e.Error}
	}
	return &StatusError{Code: resp.StatusCode, Msg: fmt.Sprintf("daemon at %s: %s", c.socket, resp.Status)}
}

// CaptureRequest says which switch port to capture: a container's
// (Network may be empty if it has one network) or, with Tunnel, Network's
// tunnel port. Count > 0 ends the capture after as many frames.
type CaptureRequest struct {
	Container string
	Network   string
	Tunnel    bool
	Count     int
}

// CaptureDroppedTrailer is the HTTP trailer of a capture stream that says
// how many frames were left out because the client read too slowly.
const CaptureDroppedTrailer = "Vxmesh-Capture-Dropped"

// CaptureStream is a running capture's pcap stream (Ethernet link type).
type CaptureStream struct {
	io.ReadCloser
	resp *http.Response
}

// Dropped returns how many frames the daemon left out of the capture
// because the stream was read too slowly, and whether it is known: only
// after the stream was read to its end (req.Count frames).
func (s *CaptureStream) Dropped() (uint64, bool) {
	n, err := strconv.ParseUint(s.resp.Trailer.Get(CaptureDroppedTrailer), 10, 64)
	return n, err == nil
}

// Capture starts a capture and returns its pcap stream, which ends after
// req.Count frames or when ctx is done or the stream is closed.
func (c *Client) Capture(ctx context.Context, req CaptureRequest) (*CaptureStream, error) {
	q := url.Values{}
	if req.Container != "" {
		q.Set("container", req.Container)
	}
	if req.Network != "" {
		q.Set("network", req.Network)
	}
	if req.Tunnel {
		q.Set("tunnel", "true")
	}
	if req.Count > 0 {
		q.Set("count", fmt.Sprint(req.Count))
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://vxmesh/v1/capture?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	stream := &http.Client{Transport: c.http.Transport} // no timeout: it runs until stopped
	resp, err := stream.Do(hr)
	if err != nil {
		return nil, c.unreachable(err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return nil, c.statusError(resp, data)
	}
	return &CaptureStream{ReadCloser: resp.Body, resp: resp}, nil
}
