package main

import (
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/vxmesh/vxmesh/api"
)

// serviceFlags are the policy flags service create and update share.
type serviceFlags struct {
	vips, ports, publish                  stringList
	mode, scheduler, affinity, healthHTTP string
	stopGrace, dnsTTL                     string
	healthTCP                             int
}

func (f *serviceFlags) register(fs *flagSet, update bool) {
	fs.Var(&f.vips, "vip", "the VIP `IP` (with one network) or NET=IP (repeatable; default: a free address of each network's subnet)")
	fs.StringVar(&f.mode, "endpoint-mode", "", "vip (a virtual IP balanced in the switch; the default) or dnsrr (DNS answers the backends)")
	fs.StringVar(&f.scheduler, "scheduler", "", "rr (round robin, the default), wrr (weighted), lc (least connections), p2c (power of two choices) or maglev (consistent hashing)")
	aff := "client-ip[:TIMEOUT]: a client's new connections go to its previous backend (default timeout 5m)"
	if update {
		aff += "; none turns it off"
	}
	fs.StringVar(&f.affinity, "affinity", "", aff)
	portHelp := "`PORT[/PROTO]` or VIPPORT:TARGET[/PROTO] the VIP accepts (tcp or udp; repeatable; default: every port, to the same port)"
	if update {
		portHelp = "`PORT[/PROTO]` or VIPPORT:TARGET[/PROTO]: replaces the ports (repeatable; --no-ports for every port)"
	}
	fs.Var(&f.ports, "port", portHelp)
	pubHelp := "publish a port on every host (the routing mesh): `published=P,target=T[,protocol=tcp|udp][,mode=ingress|host][,client-ip=preserve|snat|proxy-v2]` or P:T[/udp] (repeatable)"
	if update {
		fs.Var(&f.publish, "publish-add", pubHelp)
	} else {
		fs.Var(&f.publish, "publish", pubHelp)
	}
	fs.IntVar(&f.healthTCP, "health-tcp", 0, "check backends by connecting to TCP `PORT`")
	fs.StringVar(&f.healthHTTP, "health-http", "", "check backends with HTTP GET on `:PORT/PATH` (2xx/3xx is healthy); options may follow, e.g. \":8080/healthz interval=5s timeout=2s healthy=1 unhealthy=5\"")
	fs.StringVar(&f.stopGrace, "stop-grace-period", "", "how long a leaving backend keeps its connections (default 10s)")
	fs.StringVar(&f.dnsTTL, "dns-ttl", "", "TTL of the service's DNS answers, whole seconds (default 10s)")
}

func serviceCreate(env *cliEnv, args []string) error {
	fs := newFlags(env, "service create", true)
	var f serviceFlags
	var nets stringList
	fs.Var(&nets, "network", "network `NET` the service gets a VIP on (repeatable)")
	f.register(fs, false)
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 1, "a service name"); err != nil {
		return err
	}
	if len(nets) == 0 {
		return usagef("service %q: want --network NET", pos[0])
	}
	req := api.ServiceCreateRequest{
		Name: pos[0], Networks: nets, VIPs: f.vips, EndpointMode: f.mode, Scheduler: f.scheduler, Affinity: f.affinity,
		Ports: f.ports, HealthTCP: f.healthTCP, HealthHTTP: f.healthHTTP, StopGracePeriod: f.stopGrace, DNSTTL: f.dnsTTL,
		Publish: f.publish,
	}
	c := fs.client()
	var s api.Service
	err = noteClaimWaits(env, c, func() (err error) {
		s, err = c.CreateService(req)
		return err
	})
	if err != nil {
		return err
	}
	return fs.output(env.stdout, s, func() error {
		_, err := fmt.Fprintln(env.stdout, s.Name)
		return err
	})
}

func serviceUpdate(env *cliEnv, args []string) error {
	fs := newFlags(env, "service update", true)
	var f serviceFlags
	var add, rm, pubRm stringList
	fs.Var(&pubRm, "publish-rm", "stop publishing port `PUBLISHED[/PROTO]` (tcp by default; repeatable)")
	fs.Var(&add, "network-add", "add network `NET` (it gets a VIP; repeatable)")
	fs.Var(&rm, "network-rm", "remove network `NET` and the VIP there (repeatable)")
	f.register(fs, true)
	noPorts := fs.Bool("no-ports", false, "accept every port of the VIP again (to the same port on a backend)")
	noHealth := fs.Bool("no-health", false, "remove the active health check")
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 1, "a service name"); err != nil {
		return err
	}
	req := api.ServiceUpdateRequest{AddNetworks: add, RemoveNetworks: rm, VIPs: f.vips, NoHealth: *noHealth,
		PublishAdd: f.publish, PublishRemove: pubRm}
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	str := func(name string, v string) *string {
		if !set[name] {
			return nil
		}
		return &v
	}
	req.EndpointMode, req.Scheduler, req.Affinity = str("endpoint-mode", f.mode), str("scheduler", f.scheduler), str("affinity", f.affinity)
	req.HealthHTTP, req.StopGracePeriod, req.DNSTTL = str("health-http", f.healthHTTP), str("stop-grace-period", f.stopGrace), str("dns-ttl", f.dnsTTL)
	if set["health-tcp"] {
		req.HealthTCP = &f.healthTCP
	}
	switch {
	case *noPorts && len(f.ports) > 0:
		return usagef("service %q: --no-ports and --port: choose one", pos[0])
	case *noPorts:
		req.Ports = &[]string{}
	case len(f.ports) > 0:
		p := []string(f.ports)
		req.Ports = &p
	}
	delete(set, "socket")
	delete(set, "format")
	if len(set) == 0 {
		return usagef("service %q: nothing to update (see the flags with vxmesh help service update)", pos[0])
	}
	s, err := fs.client().UpdateService(pos[0], req)
	if err != nil {
		return err
	}
	return fs.output(env.stdout, s, func() error {
		_, err := fmt.Fprintln(env.stdout, s.Name)
		return err
	})
}

func serviceLs(env *cliEnv, args []string) error {
	fs := newFlags(env, "service ls", true)
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 0, "no arguments"); err != nil {
		return err
	}
	svcs, err := fs.client().Services()
	if err != nil {
		return err
	}
	return fs.output(env.stdout, svcs, func() error {
		t := newTable(env.stdout, "NAME", "ID", "ENDPOINT MODE", "VIPS", "SCHEDULER", "PORTS", "PUBLISHED")
		for _, s := range svcs {
			t.row(s.Name, shortID(s.ID), s.EndpointMode, dash(fmtVIPs(s.VIPs)), s.Scheduler, dash(strings.Join(s.Ports, ",")), dash(fmtPublished(s.Published)))
		}
		return t.flush()
	})
}

// fmtPublished prints published ports as Docker does, *:8080->80/tcp,
// with the mode and client address mode when not the defaults.
func fmtPublished(specs []string) string {
	out := make([]string, len(specs))
	for i, spec := range specs {
		kv := map[string]string{}
		for _, f := range strings.Split(spec, ",") {
			k, v, _ := strings.Cut(f, "=")
			kv[k] = v
		}
		out[i] = "*:" + kv["published"] + "->" + kv["target"] + "/" + kv["protocol"]
		var extra []string
		if kv["mode"] != "ingress" {
			extra = append(extra, kv["mode"])
		}
		if kv["client-ip"] != "preserve" {
			extra = append(extra, kv["client-ip"])
		}
		if len(extra) > 0 {
			out[i] += " (" + strings.Join(extra, ",") + ")"
		}
	}
	return strings.Join(out, ",")
}

// fmtVIPs prints a service's networks as NET=VIP (NET alone for dnsrr).
func fmtVIPs(vips []api.ServiceVIP) string {
	out := make([]string, len(vips))
	for i, v := range vips {
		out[i] = v.Network
		if v.VIP != "" {
			out[i] += "=" + v.VIP
		}
	}
	return strings.Join(out, ",")
}

func serviceInspect(env *cliEnv, args []string) error {
	fs := newFlags(env, "service inspect", true)
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 1, "a service name"); err != nil {
		return err
	}
	s, err := fs.client().Service(pos[0])
	if err != nil {
		return err
	}
	return fs.output(env.stdout, s, func() error { return printService(env.stdout, s) })
}

// printService is service inspect's text output.
func printService(w io.Writer, s api.Service) error {
	fmt.Fprintf(w, "Name:          %s\nID:            %s\nEndpoint mode: %s\nNetworks:      %s\n", s.Name, s.ID, s.EndpointMode, fmtVIPs(s.VIPs))
	fmt.Fprintf(w, "Scheduler:     %s\nAffinity:      %s\nPorts:         %s\nHealth check:  %s\n",
		s.Scheduler, dash(s.Affinity), orAll(strings.Join(s.Ports, ", ")), dash(s.HealthCheck))
	fmt.Fprintf(w, "Stop grace:    %s\nDNS TTL:       %s\nCreated:       %s on %s\n",
		s.StopGracePeriod, s.DNSTTL, s.Created.Format("2006-01-02 15:04:05 MST"), s.CreatedBy)
	fmt.Fprintf(w, "Published:     %s\n", dash(fmtPublished(s.Published)))
	for _, p := range s.PublishState {
		fmt.Fprintf(w, "  %s on %s (%s): %s", fmtPublished([]string{p.Published}), p.Node, p.Network, p.State)
		if p.Local {
			fmt.Fprintf(w, "; this node: %d open, %d flows, %d failed, %d bytes in, %d bytes out", p.Active, p.Total, p.Failed, p.BytesIn, p.BytesOut)
		}
		fmt.Fprintln(w)
	}
	for _, st := range s.Stats {
		fmt.Fprintf(w, "On %s (this node): %d new connections, %d active, %d packets, %d bytes, %d retries, %d rejects, %d ejections\n",
			st.Network, st.NewConns, st.Active, st.Packets, st.Bytes, st.Retries, st.Rejects, st.Ejections)
	}
	fmt.Fprintf(w, "Backends: %d\n", len(s.Backends))
	if len(s.Backends) == 0 {
		return nil
	}
	return printBackends(w, s.Backends)
}

func orAll(s string) string {
	if s == "" {
		return "all (to the same port)"
	}
	return s
}

// printBackends is the table of service ps (and inspect).
func printBackends(w io.Writer, bs []api.ServiceBackend) error {
	t := newTable(w, "NODE", "CONTAINER", "NETWORK", "IP", "WEIGHT", "STATE", "HEALTH", "HEALTH REASON", "HEALTH SINCE", "ACTIVE CONNS", "NEW CONNS")
	for _, b := range bs {
		since := "-"
		if !b.HealthSince.IsZero() {
			since = time.Since(b.HealthSince).Round(time.Second).String() + " ago"
		}
		t.row(b.Node, b.Container, b.Network, b.IP, b.Weight, b.State, b.Health, dash(b.HealthReason), since, b.ActiveConns, b.NewConns)
	}
	return t.flush()
}

func servicePs(env *cliEnv, args []string) error {
	fs := newFlags(env, "service ps", true)
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 1, "a service name"); err != nil {
		return err
	}
	s, err := fs.client().Service(pos[0])
	if err != nil {
		return err
	}
	bs := s.Backends
	if bs == nil {
		bs = []api.ServiceBackend{}
	}
	return fs.output(env.stdout, bs, func() error { return printBackends(env.stdout, bs) })
}

func serviceRm(env *cliEnv, args []string) error {
	fs := newFlags(env, "service rm", false)
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("want one or more service names")
	}
	return removeEach(env, pos, fs.client().RemoveService)
}

// parseServiceFlags parses --service NAME[:WEIGHT] values.
func parseServiceFlags(in []string) ([]api.ServiceMember, error) {
	var out []api.ServiceMember
	for _, s := range in {
		name, w, hasWeight := strings.Cut(s, ":")
		if name == "" {
			return nil, usagef("--service %q: want NAME or NAME:WEIGHT", s)
		}
		m := api.ServiceMember{Name: name}
		if hasWeight {
			n, err := strconv.Atoi(w)
			if err != nil || n < 1 {
				return nil, usagef("--service %q: weight %q: want a positive integer", s, w)
			}
			m.Weight = n
		}
		out = append(out, m)
	}
	return out, nil
}

// splitServices assigns each service a container joins to the networks
// (of netws) the service is on, asking the daemon for the services; a
// service on none of them is an error, before anything is created.
func splitServices(c *api.Client, netws []string, members []api.ServiceMember) (map[string][]api.ServiceMember, error) {
	out := map[string][]api.ServiceMember{}
	for _, m := range members {
		s, err := c.Service(m.Name)
		if err != nil {
			return nil, err
		}
		var on, all []string
		for _, v := range s.VIPs {
			all = append(all, v.Network)
			for _, n := range netws {
				if n == v.Network {
					on = append(on, n)
				}
			}
		}
		if len(on) == 0 {
			return nil, fmt.Errorf("service %q: not on the container's network(s) %s (its networks: %s)", m.Name, strings.Join(netws, ", "), strings.Join(all, ", "))
		}
		for _, n := range on {
			out[n] = append(out[n], m)
		}
	}
	return out, nil
}
