package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/metrics"
)

// listenMetrics binds cfg.MetricsAddr, if set.
func (d *Daemon) listenMetrics() error {
	if d.cfg.MetricsAddr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", d.cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("metrics address %s: %w", d.cfg.MetricsAddr, err)
	}
	d.metricsLn = ln
	return nil
}

// MetricsAddr returns the address the metrics listener is bound to, or
// nil without one.
func (d *Daemon) MetricsAddr() net.Addr {
	if d.metricsLn == nil {
		return nil
	}
	return d.metricsLn.Addr()
}

// serveMetrics serves /metrics on the metrics listener, if any, and
// returns the function that stops it.
func (d *Daemon) serveMetrics() (stop func()) {
	if d.metricsLn == nil {
		return func() {}
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler(d, metrics.DefaultMaxPorts))
	to := d.cfg.apiTimeouts
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: to.header, ReadTimeout: to.request, IdleTimeout: to.idle}
	go func() {
		if err := srv.Serve(d.metricsLn); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			d.log.Warn("metrics listener stopped", "addr", d.metricsLn.Addr().String(), "err", err)
		}
	}()
	d.log.Info("serving metrics", "addr", "http://"+d.metricsLn.Addr().String()+"/metrics")
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}
}

// ServicesWithBackends returns every service with its backends' state
// and health (the cluster's view), for the metrics; the counters are in
// Stats. It reads no data-plane counter, so a scrape costs the same as
// `service ls` whatever the number of services.
func (d *Daemon) ServicesWithBackends() []api.Service {
	d.mu.Lock()
	defer d.mu.Unlock()
	set := d.serviceSet(d.endpointSet().accepted)
	out := []api.Service{}
	for _, name := range set.names() {
		v := d.serviceView(set.specs[name], nil, false)
		v.Backends = []api.ServiceBackend{}
		for _, b := range set.backends[name] {
			v.Backends = append(v.Backends, api.ServiceBackend{Node: b.rec.Node, Container: b.rec.Name, Network: b.rec.Network,
				IP: b.rec.IP, Weight: b.m.Weight, State: b.m.State, Health: b.m.Health})
		}
		out = append(out, v)
	}
	return out
}
