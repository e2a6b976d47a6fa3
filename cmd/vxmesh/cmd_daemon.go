package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/cluster"
	"github.com/vxmesh/vxmesh/daemon"
	"github.com/vxmesh/vxmesh/dns"
	"github.com/vxmesh/vxmesh/dockerplugin"
	"github.com/vxmesh/vxmesh/gateway"
	"github.com/vxmesh/vxmesh/internal/debugserver"
	"github.com/vxmesh/vxmesh/internal/fdlimit"
	"github.com/vxmesh/vxmesh/internal/sdnotify"
	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/sandbox"
)

func cmdDaemon(env *cliEnv, args []string) error {
	fs := newFlags(env, "daemon", false)
	var f daemonFlags
	f.register(fs)
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := checkDaemonArgs(pos); err != nil {
		return err
	}
	cfg, level, err := f.config()
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("must run as root (it creates TAP devices and network namespaces)")
	}
	cfg.Socket = fs.socket
	if cfg.Socket == "" {
		cfg.Socket = os.Getenv(api.SocketEnv)
	}
	if cfg.Socket == "" {
		cfg.Socket = api.DefaultSocket
	}
	log := slog.New(slog.NewTextHandler(env.stderr, &slog.HandlerOptions{Level: level}))
	raiseOpenFiles(log)
	if f.debugAddr != "" {
		stopDebug, err := serveDebug(f.debugAddr, log)
		if err != nil {
			return err
		}
		defer stopDebug()
	}
	cfg.Logger = log
	cfg.Ready = func() { notify(log, sdnotify.Ready) }
	d, err := daemon.New(cfg)
	if err != nil {
		return err
	}
	return serveDaemon(d, f, cfg.DockerSocket, log)
}

// daemonFlags are the flags of `vxmesh daemon`.
type daemonFlags struct {
	node               string
	stateDir           string
	logLevel           string
	prefix             string
	fastPath           bool
	meshNAT            daemon.MeshNATMode
	mountTemplate      string
	advertise          string
	join               string
	gossipPort         int
	keyFile            string
	grace              time.Duration
	dataPort           uint
	rxSockets          int
	kernelTunnel       daemon.KernelTunnelMode
	ktnlRecheck        time.Duration
	busyPoll           time.Duration
	espPort            uint
	dnsUpstream        string
	dnsTimeout         time.Duration
	keyInterval        time.Duration
	dockerHost         string
	dockerPlugin       bool
	dockerPluginSocket string
	egressMax          int
	metricsAddr        string
	debugAddr          string
	ctMax              int
	ctTimeouts         string
}

// register defines the flags on fs.
func (f *daemonFlags) register(fs *flagSet) {
	fs.StringVar(&f.node, "node", "", "node name (default: the hostname)")
	fs.StringVar(&f.stateDir, "state-dir", "/var/lib/vxmesh", "directory for persisted state")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&f.prefix, "netns-prefix", "", "prefix for the named netns of containers made by run")
	f.meshNAT = daemon.MeshNATAuto
	fs.Var(modeFlag[daemon.MeshNATMode]{&f.meshNAT, daemon.ParseMeshNATMode}, "mesh-nat", "auto, on or off: translate the routing mesh's mode=ingress,client-ip=preserve TCP ports per packet: tc filters on this host's uplinks steer their segments to the daemon, which sends them to the service's VIP and the replies back, without terminating TCP (the listener stays for what is not steered). The filters take the segments before netfilter sees them, so auto steers only while no nftables chain on the prerouting or input hook (family ip, inet), no netdev chain and no legacy iptables table could filter them, checked after every nftables change and every --kernel-tunnel-recheck (new connections take the listener's path, through the firewall, while one could; connections open through the NAT when one appears are reset); on: steer past the host's input firewall; bare --mesh-nat means on")
	fs.BoolVar(&f.fastPath, "publish-fast-path", true, "dial published TCP connections to a container on this host from inside its namespace over its loopback (one ip rule and table there, at its first published connection); false: through its interface from the gateway, as UDP")
	fs.StringVar(&f.mountTemplate, "mount-template", daemon.MountTemplateAuto, "start containers' processes from a mount namespace made once without /run/netns, so a start does not copy every container's netns mount: auto (when the host's root mount is shared, so later mounts still reach containers), always (on a private root containers see the mounts of the daemon's start) or never")
	fs.StringVar(&f.advertise, "advertise", "", "underlay address other hosts reach this one at (default: the default-route interface's address)")
	fs.StringVar(&f.join, "join", "", "comma-separated HOST[:PORT] of cluster members to join")
	fs.IntVar(&f.gossipPort, "gossip-port", 7946, "memberlist gossip port (TCP and UDP)")
	fs.StringVar(&f.keyFile, "cluster-key-file", "", "file holding the cluster key (default: STATE_DIR/cluster.key, created if missing)")
	fs.DurationVar(&f.grace, "node-grace", 30*time.Second, "how long a dead node's endpoints stay before they are removed")
	fs.UintVar(&f.dataPort, "data-port", 4789, "VXLAN UDP port (the same on every node)")
	fs.IntVar(&f.rxSockets, "rx-sockets", daemon.DefaultRxSockets, fmt.Sprintf("VXLAN receive sockets on --data-port (SO_REUSEPORT), each read by its own loop: the kernel spreads flows over them (1-%d)", daemon.MaxRxSockets))
	f.kernelTunnel = daemon.KernelTunnelAuto
	fs.Var(modeFlag[daemon.KernelTunnelMode]{&f.kernelTunnel, daemon.ParseKernelTunnelMode}, "kernel-tunnel", "auto, on or off: send TCP super-segments to one peer as whole VXLAN super-packets for the kernel to segment at the underlay device (Linux 6.17+ UDP tunnel GSO, through a TAP the kernel forwards from; needs net.ipv4.conf.all.rp_filter=0). auto: only while no nftables chain on the prerouting, forward or postrouting hook (family ip, inet) and no legacy iptables table could filter the forwarded packets, checked after every nftables change and every --kernel-tunnel-recheck; on: whenever the kernel can (open the forward firewall for UDP to the data port from this node's address first); bare --kernel-tunnel means on. Falls back to userspace segmentation where unavailable")
	fs.DurationVar(&f.ktnlRecheck, "kernel-tunnel-recheck", daemon.DefaultKernelTunnelRecheck, "how often --kernel-tunnel checks its conditions again (rp_filter, legacy iptables, which send no change notification; nftables changes are followed at once)")
	fs.DurationVar(&f.busyPoll, "busy-poll", 0, "how long each data-path reader (container TAP, VTEP socket) keeps polling after a frame before it sleeps: lower request/response latency for CPU spent after traffic (e.g. 50us; 0: off, idle CPU is zero either way)")
	fs.UintVar(&f.espPort, "esp-port", 4500, "UDP port of encrypted networks' ESP (RFC 3948; the same on every node)")
	fs.StringVar(&f.dnsUpstream, "dns-upstream", "", "comma-separated IP[:PORT] the containers' resolver (127.0.0.11) forwards other names to (default: the nameservers of /etc/resolv.conf)")
	fs.DurationVar(&f.dnsTimeout, "dns-timeout", dns.DefaultTimeout, "how long a forwarded DNS query may take, retries across upstreams included")
	fs.DurationVar(&f.keyInterval, "key-rotation-interval", daemon.DefaultKeyRotationInterval, "how often the data keys of encrypted networks are rotated")
	fs.StringVar(&f.dockerHost, "docker-host", "", "the Docker Engine that attach --docker asks: unix:///PATH (default $"+sandbox.DockerHostEnv+", else unix://"+sandbox.DefaultDockerSocket+")")
	fs.BoolVar(&f.dockerPlugin, "docker-plugin", false, "serve Docker's network and IPAM plugin protocol (docker network create -d vxmesh --ipam-driver vxmesh ...), asking the Docker Engine at --docker-host for network names")
	fs.StringVar(&f.dockerPluginSocket, "docker-plugin-socket", dockerplugin.DefaultSocket, "the plugin's socket with --docker-plugin; Docker knows the driver by the socket's name (vxmesh.sock: -d vxmesh)")
	fs.IntVar(&f.egressMax, "egress-max-flows", gateway.DefaultMaxFlows, "egress flows (TCP, UDP, ICMP echo from containers to outside the overlay) and published-port flows open at once on this host; more are refused")
	fs.StringVar(&f.metricsAddr, "metrics-addr", "", "HOST:PORT to serve Prometheus metrics on at /metrics (plain HTTP, unauthenticated, no secrets; default: off)")
	fs.StringVar(&f.debugAddr, "debug-addr", "", "HOST:PORT to serve Go runtime profiles on at /debug/pprof/ and memory statistics at /debug/memstats (plain HTTP, unauthenticated: bind to loopback; default: off)")
	fs.IntVar(&f.ctMax, "conntrack-max", lb.DefaultMax, "entries of the service connection table (least recently used evicted when full)")
	fs.StringVar(&f.ctTimeouts, "conntrack-timeouts", "", "service connection timeouts as `NAME=DURATION,...`: "+strings.Join(conntrackTimeoutNames(), ", ")+
		" (defaults tcp-established=24h, tcp-syn=30s, tcp-closing=2m, tcp-close=10s, udp=120s, icmp=30s, syn-retry=900ms, eject=10s)")
}

// checkDaemonArgs refuses positional arguments, with a hint when one is a
// --kernel-tunnel or --mesh-nat mode given without '='.
func checkDaemonArgs(pos []string) error {
	if len(pos) > 0 {
		switch m := daemon.KernelTunnelMode(pos[0]); m {
		case daemon.KernelTunnelAuto, daemon.KernelTunnelOn, daemon.KernelTunnelOff:
			return usagef("unexpected argument %q: give the mode with '=': --kernel-tunnel=%s, --mesh-nat=%s", m, m, m)
		}
	}
	return wantArgs(pos, 0, "no arguments")
}

// config checks the flags, in the order their errors have always come,
// and returns the daemon's configuration (its socket, logger and Ready
// left to the caller) and the log level.
func (f *daemonFlags) config() (daemon.Config, slog.Level, error) {
	cfg := daemon.Config{
		Node: f.node, StateDir: f.stateDir, NetnsPrefix: f.prefix, NoFastPath: !f.fastPath, MeshNAT: f.meshNAT, MountTemplate: f.mountTemplate,
		GossipPort: f.gossipPort, ClusterKeyFile: f.keyFile,
		NodeGrace: f.grace, DataPort: uint16(f.dataPort), RxSockets: f.rxSockets, KernelTunnel: f.kernelTunnel, KernelTunnelRecheck: f.ktnlRecheck, BusyPoll: f.busyPoll, DNSTimeout: f.dnsTimeout,
		KeyRotationInterval: f.keyInterval, ESPPort: uint16(f.espPort),
		MetricsAddr: f.metricsAddr, ConntrackMax: f.ctMax, EgressMaxFlows: f.egressMax, StartMain: startMain,
	}
	level, err := f.checkFirst(&cfg)
	if err != nil {
		return daemon.Config{}, 0, err
	}
	if err := f.checkRest(&cfg); err != nil {
		return daemon.Config{}, 0, err
	}
	return cfg, level, nil
}

// checkFirst checks the conntrack, Docker, key, kernel tunnel, log and
// advertise flags, setting the parsed ones in cfg.
func (f *daemonFlags) checkFirst(cfg *daemon.Config) (slog.Level, error) {
	var level slog.Level
	if f.ctMax < 1 {
		return level, usagef("--conntrack-max %d: want a positive number of entries", f.ctMax)
	}
	timeouts, err := parseConntrackTimeouts(f.ctTimeouts)
	if err != nil {
		return level, usagef("--conntrack-timeouts: %v", err)
	}
	cfg.ConntrackTimeouts = timeouts
	if f.dockerHost == "" {
		f.dockerHost = os.Getenv(sandbox.DockerHostEnv)
	}
	if cfg.DockerSocket, err = sandbox.DockerSocket(f.dockerHost); err != nil {
		return level, usagef("--docker-host (or $%s): %v", sandbox.DockerHostEnv, err)
	}
	if f.keyInterval < time.Second {
		return level, usagef("--key-rotation-interval %s: at least 1s", f.keyInterval)
	}
	if f.ktnlRecheck < 100*time.Millisecond {
		return level, usagef("--kernel-tunnel-recheck %s: at least 100ms", f.ktnlRecheck)
	}
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return level, usagef("--log-level %q: want debug, info, warn or error", f.logLevel)
	}
	if f.advertise != "" {
		adv, err := netip.ParseAddr(f.advertise)
		if err != nil || !adv.Is4() {
			return level, usagef("--advertise %q: not an IPv4 address", f.advertise)
		}
		cfg.Advertise = adv
	}
	return level, nil
}

// checkRest checks the port, timing, DNS, egress and address flags and
// --join, setting the parsed ones in cfg.
func (f *daemonFlags) checkRest(cfg *daemon.Config) error {
	if f.dataPort == 0 || f.dataPort > 65535 {
		return usagef("--data-port %d: out of range 1-65535", f.dataPort)
	}
	if f.busyPoll < 0 || f.busyPoll > time.Second {
		return usagef("--busy-poll %v: out of range 0-1s", f.busyPoll)
	}
	if f.rxSockets < 1 || f.rxSockets > daemon.MaxRxSockets {
		return usagef("--rx-sockets %d: out of range 1-%d", f.rxSockets, daemon.MaxRxSockets)
	}
	if f.espPort == 0 || f.espPort > 65535 || f.espPort == f.dataPort {
		return usagef("--esp-port %d: out of range 1-65535 or the same as --data-port", f.espPort)
	}
	if f.gossipPort <= 0 || f.gossipPort > 65535 {
		return usagef("--gossip-port %d: out of range 1-65535", f.gossipPort)
	}
	if f.grace <= 0 {
		return usagef("--node-grace %s: must be positive", f.grace)
	}
	ups, err := dns.ParseUpstreams(f.dnsUpstream)
	if err != nil {
		return usagef("--dns-upstream: %v", err)
	}
	cfg.DNSUpstreams = ups
	if f.dnsTimeout <= 0 {
		return usagef("--dns-timeout %s: must be positive", f.dnsTimeout)
	}
	if f.egressMax < 1 || f.egressMax > maxEgressFlows {
		return usagef("--egress-max-flows %d: out of range 1-%d", f.egressMax, maxEgressFlows)
	}
	if f.metricsAddr != "" {
		if _, port, err := net.SplitHostPort(f.metricsAddr); err != nil || port == "" {
			return usagef("--metrics-addr %q: want HOST:PORT", f.metricsAddr)
		}
	}
	if f.debugAddr != "" {
		if _, port, err := net.SplitHostPort(f.debugAddr); err != nil || port == "" {
			return usagef("--debug-addr %q: want HOST:PORT", f.debugAddr)
		}
	}
	for _, p := range strings.Split(f.join, ",") {
		if p = strings.TrimSpace(p); p != "" {
			cfg.Join = append(cfg.Join, p)
		}
	}
	return nil
}

// serveDaemon serves d (and the Docker plugin, with --docker-plugin)
// until a signal stops it, telling systemd when it is stopping.
func serveDaemon(d *daemon.Daemon, f daemonFlags, dockerSocket string, log *slog.Logger) error {
	ctx, stop := handleSignals(log)
	defer stop()
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
			notify(log, sdnotify.Stopping)
		case <-stopped:
		}
	}()
	var pluginDone chan error
	var err error
	if f.dockerPlugin {
		if pluginDone, err = serveDockerPlugin(ctx, d, dockerSocket, f.dockerPluginSocket, filepath.Join(f.stateDir, dockerPluginState), log); err != nil {
			d.Close()
			return err
		}
	}
	err = d.Serve(ctx)
	if pluginDone != nil {
		if perr := <-pluginDone; perr != nil && err == nil {
			err = perr
		}
	}
	log.Info("vxmesh daemon stopped")
	return err
}

// modeFlag is a mode flag (--kernel-tunnel, --mesh-nat: auto, on, off)
// that also takes the boolean spellings of the bool flag it was (bare
// --mesh-nat is on, --mesh-nat=false off).
type modeFlag[M ~string] struct {
	m     *M
	parse func(string) (M, error)
}

func (f modeFlag[M]) String() string {
	if f.m == nil {
		return ""
	}
	return string(*f.m)
}

func (f modeFlag[M]) Set(s string) error {
	m, err := f.parse(s)
	if err != nil {
		// The flag package names the value and the flag before it.
		return errors.New("want auto, on or off")
	}
	*f.m = m
	return nil
}

// IsBoolFlag lets the flag stand alone, meaning true (on).
func (f modeFlag[M]) IsBoolFlag() bool { return true }

// dockerPluginState is the Docker plugin's file in the state directory:
// its endpoint records.
const dockerPluginState = "docker-plugin.json"

// serveDockerPlugin listens on socket (failing at once if it cannot) and
// serves the Docker network plugin, with its records in stateFile, until
// ctx is done; the channel gets its end.
func serveDockerPlugin(ctx context.Context, d *daemon.Daemon, dockerSocket, socket, stateFile string, log *slog.Logger) (chan error, error) {
	ln, err := dockerplugin.Listen(socket)
	if err != nil {
		return nil, err
	}
	p := dockerplugin.New(dockerplugin.Config{
		Backend: d, Engine: dockerplugin.NewUnixEngine(dockerSocket),
		Driver: dockerplugin.DriverName(socket), StateFile: stateFile, Logger: log,
	})
	done := make(chan error, 1)
	go func() {
		err := p.Serve(ctx, ln)
		if err != nil {
			log.Error("docker network plugin", "err", err)
		}
		done <- err
	}()
	return done, nil
}

// serveDebug serves the runtime's profiles and memory statistics
// (internal/debugserver) on addr until stop is called.
func serveDebug(addr string, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("debug address %s: %w", addr, err)
	}
	srv := &http.Server{Handler: debugserver.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
			log.Error("debug listener", "err", err)
		}
	}()
	log.Info("debug listener", "addr", ln.Addr().String())
	return func() { srv.Close() }, nil
}

// notify tells systemd (a Type=notify unit) the daemon's state; outside
// systemd it does nothing.
// raiseOpenFiles sets the soft open-files limit to the hard limit (each
// container costs the daemon descriptors) and logs both.
func raiseOpenFiles(log *slog.Logger) {
	before, after, err := fdlimit.Raise()
	if err != nil {
		log.Warn("open-files limit not raised", "soft", before.Soft, "hard", before.Hard, "err", err)
		return
	}
	log.Info("open-files limit", "soft", after.Soft, "hard", after.Hard, "soft_before", before.Soft)
}

func notify(log *slog.Logger, state string) {
	if sent, err := sdnotify.Notify(state); err != nil {
		log.Warn("systemd notification failed", "state", state, "err", err)
	} else if sent {
		log.Debug("systemd notified", "state", state)
	}
}

// handleSignals returns a context that SIGINT or SIGTERM cancels, logging
// which signal stopped the daemon. SIGHUP is logged and ignored, so the
// daemon survives the end of the session that started it (`sudo vxmesh
// daemon &`). stop releases the signals.
func handleSignals(log *slog.Logger) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				name := unix.SignalName(s.(syscall.Signal))
				switch {
				case s == syscall.SIGHUP:
					log.Info("SIGHUP ignored", "signal", name)
				case ctx.Err() != nil:
					log.Info("already stopping", "signal", name)
				default:
					log.Info("stopping on signal", "signal", name)
					cancel()
				}
			case <-done:
				return
			}
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		close(done)
		cancel()
	}
}

func cmdKeygen(env *cliEnv, args []string) error {
	fs := newFlags(env, "keygen", false)
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 0, "no arguments"); err != nil {
		return err
	}
	key, err := cluster.GenerateKey()
	if err != nil {
		return err
	}
	fmt.Fprintln(env.stdout, cluster.EncodeKey(key))
	return nil
}

func cmdNodeLs(env *cliEnv, args []string) error {
	fs := newFlags(env, "node ls", true)
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 0, "no arguments"); err != nil {
		return err
	}
	nodes, err := fs.client().Nodes()
	if err != nil {
		return err
	}
	return fs.output(env.stdout, nodes, func() error {
		t := newTable(env.stdout, "NAME", "ADDR", "DATA ADDR", "STATE", "NETWORKS")
		for _, n := range nodes {
			name := n.Name
			if n.Self {
				name += " *"
			}
			t.row(name, n.Addr, dash(n.DataAddr), n.State, dash(strings.Join(n.Networks, ",")))
		}
		return t.flush()
	})
}

// conntrackTimeouts names the fields of lb.Timeouts for --conntrack-timeouts.
func conntrackTimeouts(t *lb.Timeouts) map[string]*time.Duration {
	return map[string]*time.Duration{
		"tcp-established": &t.TCPEstablished, "tcp-syn": &t.TCPSyn, "tcp-closing": &t.TCPClosing, "tcp-close": &t.TCPClose,
		"udp": &t.UDP, "icmp": &t.ICMP, "syn-retry": &t.SynRetry, "eject": &t.Eject,
	}
}

func conntrackTimeoutNames() []string {
	var out []string
	for n := range conntrackTimeouts(&lb.Timeouts{}) {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// parseConntrackTimeouts parses NAME=DURATION,... into lb.Timeouts; the
// timeouts not named keep their defaults (zero fields).
func parseConntrackTimeouts(s string) (lb.Timeouts, error) {
	var t lb.Timeouts
	fields := conntrackTimeouts(&t)
	for _, kv := range strings.Split(s, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		name, val, ok := strings.Cut(kv, "=")
		dst := fields[name]
		if !ok || dst == nil {
			return t, fmt.Errorf("%q: want NAME=DURATION with NAME one of %s", kv, strings.Join(conntrackTimeoutNames(), ", "))
		}
		d, err := time.ParseDuration(val)
		if err != nil || d <= 0 {
			return t, fmt.Errorf("%s=%s: want a positive duration", name, val)
		}
		*dst = d
	}
	return t, nil
}

// maxEgressFlows bounds --egress-max-flows: each flow holds two sockets
// (one file descriptor, one netstack endpoint) and copy buffers.
const maxEgressFlows = 1 << 22
