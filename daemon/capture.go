package daemon

import (
	"net/http"
	"strconv"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/dataplane"
	"github.com/vxmesh/vxmesh/vswitch"
)

// captureQueue is how many frames a capture holds for a slow client before
// it drops (and counts) more.
const captureQueue = 4096

// captureTarget resolves what GET /v1/capture asks for to a data plane
// (network, port name): a container's endpoint (on network, which may be
// empty if the container has one endpoint), or network's tunnel port.
func (d *Daemon) captureTarget(container, network string, tunnel bool) (string, string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if tunnel {
		switch {
		case container != "":
			return "", "", invalid("give a container or --tunnel, not both")
		case network == "":
			return "", "", invalid("--tunnel needs --network")
		case d.networks[network] == nil:
			return "", "", notFound("network %q not found", network)
		}
		return network, dataplane.TunnelPortName, nil
	}
	if container == "" {
		return "", "", invalid("which container? (or --network NET --tunnel)")
	}
	c := d.containers[container]
	if c == nil {
		return "", "", notFound("container %q not found on this host", container)
	}
	if network == "" {
		if len(c.endpoints) != 1 {
			return "", "", invalid("container %q has %d networks: give --network", container, len(c.endpoints))
		}
		for n := range c.endpoints {
			network = n
		}
	}
	ep := c.endpoints[network]
	if ep == nil {
		return "", "", notFound("container %q has no endpoint on network %q", container, network)
	}
	return network, ep.portName(), nil
}

// serveCapture streams a pcap (Ethernet link type) of the frames at a
// switch port until the client goes away, count frames were sent (if
// count > 0) or the daemon stops; the trailer api.CaptureDroppedTrailer
// says how many frames the capture's queue had no room for.
func (d *Daemon) serveCapture(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	count, err := queryInt(q.Get("count"), "count")
	if err != nil {
		fail(w, err)
		return
	}
	snaplen, err := queryInt(q.Get("snaplen"), "snaplen")
	if err != nil {
		fail(w, err)
		return
	}
	if snaplen == 0 || snaplen > vswitch.DefaultSnaplen {
		snaplen = vswitch.DefaultSnaplen
	}
	network, port, err := d.captureTarget(q.Get("container"), q.Get("network"), q.Get("tunnel") == "true")
	if err != nil {
		fail(w, err)
		return
	}
	c := vswitch.NewCapture(snaplen, captureQueue)
	stop, err := d.dp.StartCapture(network, port, c)
	if err != nil {
		fail(w, conflict("%w", err))
		return
	}
	sent := 0
	defer func() {
		stop()
		w.Header().Set(api.CaptureDroppedTrailer, strconv.FormatUint(c.Dropped(), 10))
		d.log.Info("capture ended", "network", network, "port", port, "frames", sent, "dropped", c.Dropped())
	}()
	w.Header().Set("Content-Type", "application/vnd.tcpdump.pcap")
	w.Header().Set("Trailer", api.CaptureDroppedTrailer)
	pw := pcapgo.NewWriterNanos(w)
	if err := pw.WriteFileHeader(uint32(snaplen), layers.LinkTypeEthernet); err != nil {
		return
	}
	rc := http.NewResponseController(w)
	rc.Flush()
	for ; count == 0 || sent < count; sent++ {
		var f vswitch.CapturedFrame
		select {
		case f = <-c.Frames():
		case <-r.Context().Done():
			return
		case <-d.ctx.Done():
			return
		}
		ci := gopacket.CaptureInfo{Timestamp: f.Time, CaptureLength: len(f.Data), Length: f.Len}
		if pw.WritePacket(ci, f.Data) != nil {
			return
		}
		if len(c.Frames()) == 0 && rc.Flush() != nil {
			return
		}
	}
}

// queryInt parses a non-negative integer query parameter ("" is 0).
func queryInt(s, name string) (int, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, invalid("%s %q: want a non-negative integer", name, s)
	}
	return n, nil
}
