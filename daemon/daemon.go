// Package daemon is the per-host vxmesh daemon: it decides which networks
// and endpoints this host has (from API requests and the cluster's
// tables), wires container namespaces through TAP devices, persists its
// decisions in the state directory and serves the HTTP+JSON API on a unix
// socket. The dataplane package applies its decisions: the daemon hands it
// one complete desired state at a time (desiredDataplane).
package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/cluster"
	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/dataplane"
	"github.com/vxmesh/vxmesh/gateway"
	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/lb/health"
	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/sandbox"
	"github.com/vxmesh/vxmesh/tunnel"
)

// DefaultRxSockets is the default Config.RxSockets, and MaxRxSockets its
// largest value.
const (
	DefaultRxSockets = 1
	MaxRxSockets     = 64
)

// Config is what `vxmesh daemon` is started with.
type Config struct {
	// Node names this host; it defaults to the hostname.
	Node string
	// Socket is the unix socket the API listens on (mode 0600).
	Socket string
	// StateDir holds the persisted state and per-container files.
	StateDir string
	// NetnsPrefix is prepended to the named network namespace of every
	// container made by `run`, so several daemons can share a machine.
	NetnsPrefix string
	// NoFastPath turns the published-port fast path off: published TCP
	// connections then enter containers through their interface, from
	// the gateway's stack, like UDP (see fastpath.go).
	NoFastPath bool
	// MeshNAT says when the routing mesh's mode=ingress,
	// client-ip=preserve TCP ports are translated per packet on this
	// host's uplinks instead of their connections terminated
	// (mesh_nat.go): MeshNATAuto, MeshNATOn or MeshNATOff ("" is off).
	MeshNAT MeshNATMode
	// MountTemplate says whether container processes start from a mount
	// template (MountTemplateAuto when "", MountTemplateAlways or
	// MountTemplateNever; see mnttemplate.go).
	MountTemplate string
	// UnderlayMTU is the MTU networks are derived from (network MTU
	// defaults to UnderlayMTU-50); zero means detect it from the interface
	// holding the advertised address (or 1500), again at every network
	// create.
	UnderlayMTU int
	// Logger receives the daemon's log; nil means slog.Default().
	Logger *slog.Logger
	// Sandbox does the namespace plumbing; nil means the real Linux one.
	Sandbox Sandbox
	// DockerSocket is the unix socket of the Docker Engine that `attach
	// --docker` asks (the real Sandbox only); empty means
	// sandbox.DefaultDockerSocket.
	DockerSocket string
	// StartMain, if set, starts a container's main process as `run -d`
	// does (a monitor that reports its start and its exit to this
	// daemon's API) and returns once its start was reported: `vxmesh
	// start`, `restart` and restart policies use it. Without it they are
	// refused. `vxmesh daemon` sets it.
	StartMain func(MainStart) error
	// Ready, if set, is called once the API is serving (the daemon's
	// command sends systemd's READY=1 from it).
	Ready func()

	// Advertise is the underlay address other hosts reach this one at, for
	// gossip and VXLAN; zero means the address of the interface holding
	// the default route (127.0.0.1 when there is none).
	Advertise netip.Addr
	// Join lists members (HOST or HOST:PORT) to join at start. When none
	// answers, Start fails, unless this node was in a cluster before (its
	// members.json lists members): then it keeps trying them and the saved
	// members in the background, so a cluster restarted all at once finds
	// itself whatever order its daemons come up in.
	Join []string
	// GossipPort is the memberlist TCP+UDP port (default 7946).
	GossipPort int
	// ClusterKeyFile holds the cluster key; empty means STATE_DIR/cluster.key,
	// created when missing.
	ClusterKeyFile string
	// NodeGrace is how long a dead node's endpoints stay (default 30 s).
	NodeGrace time.Duration
	// DataPort is the VXLAN UDP port (default 4789), the same on every node.
	DataPort uint16
	// RxSockets is the number of VTEP receive sockets on the data port
	// (SO_REUSEPORT, one receive loop each: tunnel.UDPConfig.RxSockets);
	// 0 means DefaultRxSockets.
	RxSockets int
	// KernelTunnel says when TCP super-segments to one peer go as whole
	// VXLAN super-packets through a TAP (tunnel.KernelTunnel, Linux
	// 6.17+), for the kernel to segment at the underlay device: never
	// (KernelTunnelOff, also ""), whenever the kernel can
	// (KernelTunnelOn), or while also nothing in the host's netfilter can
	// filter the packets the kernel forwards (KernelTunnelAuto, the CLI's
	// default; see kerneltnl.go). Where the kernel or the host cannot
	// (see tunnel.OpenKernelTunnel), the daemon logs why and segments them
	// itself as without it.
	KernelTunnel KernelTunnelMode
	// KernelTunnelRecheck is how often the conditions of KernelTunnel are
	// checked again while the daemon runs; 0 means
	// DefaultKernelTunnelRecheck.
	KernelTunnelRecheck time.Duration
	// BusyPoll, if positive, is how long each data-path reader (a
	// container's TAP, a VTEP receive socket) keeps polling after a frame
	// before it blocks in the netpoller: it trades CPU after traffic for
	// the wake-up latency of the next frame (internal/busypoll). 0: off.
	BusyPoll time.Duration
	// Underlay replaces the VTEP's UDP sockets (tests).
	Underlay tunnel.Underlay
	// ESPPort is the UDP port of encrypted networks' ESP datagrams
	// (default 4500), the same on every node.
	ESPPort uint16
	// ESPUnderlay replaces the ESP receive socket (tests).
	ESPUnderlay tunnel.Underlay

	// DNSUpstreams are the servers the embedded resolver forwards names
	// that are not containers' to; none means the nameservers of the
	// host's /etc/resolv.conf (except 127.0.0.11).
	DNSUpstreams []netip.AddrPort
	// DNSTimeout bounds a forwarded query, retries included (default 2 s).
	DNSTimeout time.Duration
	// DNSMaxInflight bounds the forwarded queries in flight (default 1024).
	DNSMaxInflight int

	// KeyRotationInterval is how often the rotator replaces the data key
	// of encrypted networks (default DefaultKeyRotationInterval).
	KeyRotationInterval time.Duration

	// ConntrackMax bounds the host's service connection table (default
	// lb.DefaultMax); ConntrackTimeouts' zero fields take
	// lb.DefaultTimeouts.
	ConntrackMax      int
	ConntrackTimeouts lb.Timeouts

	// MetricsAddr, if set, is the HOST:PORT of the Prometheus metrics
	// listener (/metrics, plain HTTP, unauthenticated, no secrets). It is
	// bound in New, so a busy address fails before the cluster is joined.
	MetricsAddr string

	// EgressMaxFlows bounds the egress flows open at once on this host
	// (gateway.DefaultMaxFlows if 0).
	EgressMaxFlows int

	tuneCluster func(*cluster.Config)
	// now replaces time.Now for the restart policy's clock (tests).
	now func() time.Time
	// underlayMTUNow reads the underlay MTU at each network create;
	// nil means UnderlayMTU, as configured (set when UnderlayMTU was
	// left to detection, and by tests).
	underlayMTUNow func() int
	// blockHoldDown replaces defaultBlockHoldDown (tests).
	blockHoldDown time.Duration
	// apiTimeouts replaces the API server's timeouts (tests).
	apiTimeouts *apiTimeouts
}

// apiTimeouts bound how long the API waits for a client: for the request
// headers, for the whole request (headers and body; the handler's own
// work is not bounded), and for the next request on an idle connection.
type apiTimeouts struct {
	header, request, idle time.Duration
}

// The API server's timeouts (see apiTimeouts). api.Client lets idle
// connections go sooner (api.ClientIdleTimeout).
const (
	apiHeaderTimeout  = 10 * time.Second
	apiRequestTimeout = 30 * time.Second
	apiIdleTimeout    = 2 * time.Minute
)

// Daemon is one host's vxmesh daemon.
type Daemon struct {
	cfg  Config
	log  *slog.Logger
	sb   Sandbox
	lock *os.File
	// mountNS is the mount template container processes start from
	// (mnttemplate.go); "" for none. Set before the API serves.
	mountNS string
	// selfNs identifies the daemon's own network namespace, which is
	// never a container's.
	selfNs [2]uint64
	// ktnl is the state of kernel tunnel segmentation (kerneltnl.go),
	// set by start and by watchFirewall.
	ktnl atomic.Pointer[ktnlState]
	// ktnlCheck replaces kernelTunnelAllowed (tests); nil: that.
	ktnlCheck func(KernelTunnelMode) (bool, string)

	// underlayLAN is the prefix of the advertise address on its
	// interface, which automatically picked subnets avoid (invalid when
	// unknown).
	underlayLAN netip.Prefix

	cl *cluster.Cluster
	dp *dataplane.Dataplane
	// lbBackends are the backend addresses of every network's services in
	// the last desired data plane (flushLeftBackends); guarded by mu.
	lbBackends map[string]map[netip.Addr]bool
	egress     *gateway.Egress
	// fast are the containers' published-port fast paths, by container
	// name (fastpath.go).
	fast fastPaths
	// meshSteer is the published-port NAT's steering (mesh_nat.go),
	// meshSteerErr its last error logged.
	meshSteer    *netdev.Steer
	meshSteerErr string
	// meshGate switches the steering on and off (--mesh-nat=auto) and
	// meshNAT is its state, set by start and by watchFirewall;
	// meshNATCheck replaces meshNATAllowed (tests); nil: that.
	meshGate     *gatedUplinks
	meshNAT      atomic.Pointer[meshNATState]
	meshNATCheck func(MeshNATMode) (bool, string)
	// gwDNS are the resolvers at the networks' gateway addresses
	// (gateway_dns.go); guarded by mu.
	gwDNS map[string]*gatewayResolver
	// heldChecked lets holdBlocks skip the networks whose endpoints and
	// blocks did not change since all were found held.
	heldChecked map[string]heldCheck
	// holdKick asks the block keeper (keepBlocks) for a holdBlocks run;
	// made by startWatchers.
	holdKick chan struct{}
	// mesh are the services' published ports this host serves, by
	// meshWant.key, and meshPublished the state record last published
	// (mesh_listen.go); guarded by mu.
	mesh          map[string]*meshListener
	meshPublished string
	dns           *resolver
	keys          *keyState
	ctx           context.Context
	cancel        context.CancelFunc
	done          sync.WaitGroup

	// passes counts the passes of the loops the cluster's changes drive
	// (watchCluster's reconcile, the DNS records' refresh).
	passes struct{ reconcile, dns atomic.Uint64 }

	closeOnce sync.Once
	// refused counts the table records this node refuses.
	refused refusals
	// epDecoded caches the decoded endpoint records (clusterEndpoints).
	epDecoded epDecodeCache
	// epSet caches endpointSet by cluster generation.
	epSet endpointSetCache
	// netRecs caches networkRecords by cluster generation.
	netRecs netRecordsCache
	// epsByNet caches endpointsOf by network; guarded by mu.
	epsByNet map[string][]*endpoint
	// ipsByNet caches the addresses of endpointsOf (ipTaken); guarded by
	// mu.
	ipsByNet map[string]map[netip.Addr]int
	// localInBlock counts, with ipsByNet, the addresses of endpointsOf in
	// each address block of the network's block size (allocateIP skips a
	// block they fill); guarded by mu.
	localInBlock map[string]map[netip.Prefix]int
	// backendCtrs caches the containers with an endpoint that joined a
	// service (backendContainers), the only ones syncHealth looks at; nil
	// means not known. Guarded by mu.
	backendCtrs map[*container]bool
	// byNetns caches the containers (not host TAPs) by their namespace's
	// identity (containerByNetns); nil means not known. Guarded by mu.
	byNetns map[[2]uint64][]*container
	// portsOf caches desiredPorts by network; guarded by mu.
	portsOf map[string]portsCache
	// remotes caches desiredRemotes; guarded by mu.
	remotes remotesCache

	// metricsLn is the metrics listener (nil without cfg.MetricsAddr).
	metricsLn net.Listener

	// known are the members saved in members.json, by name; only start
	// and the cluster watcher use it.
	known map[string]savedMember

	// blockClaim is held by an allocation that found no room in this
	// node's blocks from its check of them to the end of its block claim
	// (allocateIP); it is taken before mu, never under it.
	blockClaim sync.Mutex

	// mu guards the daemon's decisions. It is never held across a
	// cluster round trip, the Docker API or plugging an interface: Attach
	// and CreateNetwork reserve what they decide (attaching, reservedIPs,
	// creating) and validate again after re-taking it. The data plane has its own
	// lock; applyDataplane hands it the desired state under mu.
	mu       sync.Mutex
	networks map[string]*localNetwork
	// restoredAt is when the saved state was read (gateway_host.go).
	restoredAt time.Time
	// removals are the service removals this node saw (service_persist.go).
	removals   removals
	containers map[string]*container
	// attaching names the containers an Attach is in flight for, with the
	// network it attaches to; reservedIPs the addresses such Attaches
	// picked, by network.
	attaching   map[string]string
	reservedIPs map[string]map[netip.Addr]string
	// tearingDown names the containers whose processes, interfaces or
	// namespace a RemoveContainer or Detach is taking down without d.mu
	// (the kernel's part: slow, and serialised by its rtnl lock over
	// every namespace of the machine); nothing else may change them
	// meanwhile.
	tearingDown map[string]bool
	// blocks tracks the release of this node's empty address blocks.
	blocks blockTracker
	// store writes the state directory's snapshot and journal.
	store *stateStore
	// creating holds the name, subnet and VNI of each CreateNetwork in
	// flight, by name.
	creating map[string]netClaim
	// svcCreating holds the lower-cased names of the CreateService calls
	// in flight; leaving the containers whose backends drain before
	// their removal (drainBackends).
	svcCreating map[string]bool
	leaving     map[string]bool

	// prober runs the active health checks of the local backends;
	// healthRefs maps its targets' keys to the backends (syncHealth).
	// Close closes prober without d.mu: its callback takes d.mu.
	prober     *health.Prober
	healthRefs map[string]healthRef
	// stopping is set (under mu) when Close begins: reconcile changes
	// nothing after it.
	stopping bool
}

// New validates cfg, takes the state directory's lock and restores the
// persisted networks and endpoints, reopening every container's interface.
func New(cfg Config) (*Daemon, error) {
	if err := cfg.complete(); err != nil {
		return nil, err
	}
	// A daemon already answering on the socket keeps it: refuse before
	// taking ports, the cluster or the containers' resolvers.
	if cfg.Socket != "" {
		if err := socketAnswers(cfg.Socket); err != nil {
			return nil, err
		}
	}
	keys, err := newKeyState()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir %s: %w", cfg.StateDir, err)
	}
	lock, err := lockStateDir(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	d := newDaemon(cfg, lock, keys)
	if err := d.listenMetrics(); err != nil {
		d.Close()
		return nil, err
	}
	d.setupMountTemplate()
	d.ctx, d.cancel = context.WithCancel(context.Background())
	if err := d.start(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// complete fills in the defaults of the fields cfg leaves unset and
// refuses values out of range, in the order New always has.
func (cfg *Config) complete() error {
	if err := cfg.completeHost(); err != nil {
		return err
	}
	if err := cfg.completePorts(); err != nil {
		return err
	}
	return cfg.completeLimits()
}

// completeHost fills in the node name, logger, sandbox, advertised
// address and underlay MTU, and requires the state dir.
func (cfg *Config) completeHost() error {
	if cfg.Node == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("node name: %w", err)
		}
		cfg.Node = h
	}
	if cfg.StateDir == "" {
		return errors.New("state dir: not set")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Sandbox == nil {
		cfg.Sandbox = linuxSandbox{dockerSocket: cfg.DockerSocket}
	}
	if !cfg.Advertise.IsValid() {
		cfg.Advertise = detectAdvertise()
	}
	if cfg.UnderlayMTU == 0 && cfg.underlayMTUNow == nil {
		// Detected, so read again where it counts (network create): an
		// MTU set after the daemon started (DHCP's, a VPN's) is the one
		// the tunnel's packets meet.
		adv := cfg.Advertise
		cfg.underlayMTUNow = func() int { return underlayMTU(adv) }
	}
	if cfg.UnderlayMTU == 0 {
		cfg.UnderlayMTU = cfg.underlayMTUNow()
	}
	return nil
}

// underlayMTU is this host's underlay MTU now: the configured one, or the
// advertised address's interface's as it is at this moment.
func (d *Daemon) underlayMTU() int {
	if d.cfg.underlayMTUNow != nil {
		return d.cfg.underlayMTUNow()
	}
	return d.cfg.UnderlayMTU
}

// completePorts fills in the gossip, data and ESP ports and the number of
// receive sockets, and checks them.
func (cfg *Config) completePorts() error {
	if cfg.GossipPort == 0 {
		cfg.GossipPort = 7946
	}
	if cfg.DataPort == 0 {
		cfg.DataPort = packet.VXLANPort
	}
	if cfg.ESPPort == 0 {
		cfg.ESPPort = esp.Port
	}
	if cfg.RxSockets == 0 {
		cfg.RxSockets = DefaultRxSockets
	}
	if cfg.RxSockets < 0 || cfg.RxSockets > MaxRxSockets {
		return fmt.Errorf("rx sockets %d: out of range 1-%d", cfg.RxSockets, MaxRxSockets)
	}
	if cfg.ESPPort == cfg.DataPort {
		return fmt.Errorf("esp port %d: the same as the data port", cfg.ESPPort)
	}
	return nil
}

// completeLimits fills in and checks the node grace, key rotation,
// conntrack size, API timeouts and mount template.
func (cfg *Config) completeLimits() error {
	if cfg.NodeGrace == 0 {
		cfg.NodeGrace = 30 * time.Second
	}
	if cfg.KeyRotationInterval == 0 {
		cfg.KeyRotationInterval = DefaultKeyRotationInterval
	}
	if cfg.KeyRotationInterval < time.Second {
		return fmt.Errorf("key rotation interval %s: at least 1s", cfg.KeyRotationInterval)
	}
	if cfg.ConntrackMax < 0 {
		return fmt.Errorf("conntrack max %d: want a positive number of entries", cfg.ConntrackMax)
	}
	if cfg.ConntrackMax == 0 {
		cfg.ConntrackMax = lb.DefaultMax
	}
	if cfg.apiTimeouts == nil {
		cfg.apiTimeouts = &apiTimeouts{header: apiHeaderTimeout, request: apiRequestTimeout, idle: apiIdleTimeout}
	}
	return validMountTemplate(cfg.MountTemplate)
}

// newDaemon returns the daemon of the completed cfg with its empty
// tables, holding the state dir's lock, not yet started.
func newDaemon(cfg Config, lock *os.File, keys *keyState) *Daemon {
	_, underlayLAN, _ := underlayIfc(cfg.Advertise)
	d := &Daemon{
		cfg:         cfg,
		underlayLAN: underlayLAN,
		log:         cfg.Logger,
		sb:          cfg.Sandbox,
		lock:        lock,
		keys:        keys,
		networks:    map[string]*localNetwork{},
		containers:  map[string]*container{},
		attaching:   map[string]string{},
		reservedIPs: map[string]map[netip.Addr]string{},
		tearingDown: map[string]bool{},
		removals:    removals{},
		creating:    map[string]netClaim{},
		svcCreating: map[string]bool{},
		leaving:     map[string]bool{},
		healthRefs:  map[string]healthRef{},
	}
	d.prober = health.NewProber(d.onHealth)
	if dev, ino, err := d.sb.NetnsIdentity("/proc/self/ns/net"); err == nil {
		d.selfNs = [2]uint64{dev, ino}
	}
	return d
}

// start brings up the VTEP and the cluster membership, restores the
// persisted state, joins the cluster and announces this node's networks
// and endpoints.
func (d *Daemon) start() error {
	key, err := d.loadClusterKey()
	if err != nil {
		return err
	}
	// Every host's gateways derive their TCP ISNs and timestamps from the
	// cluster key, so a client's connections through different hosts'
	// published ports agree for the backends (gateway/tcpsync.go).
	tcpSecret, err := gateway.TCPSecret(key)
	if err != nil {
		return err
	}
	ul, eul, err := d.openUnderlays()
	if err != nil {
		return err
	}
	super := d.startDataplane(ul, eul, tcpSecret)
	if err := d.startCluster(key); err != nil {
		return err
	}
	d.startDNS()
	saved, err := d.restore()
	if err != nil {
		return err
	}
	d.sweep()
	if len(d.cfg.Join) > 0 {
		if _, err := d.cl.Join(d.cfg.Join); err != nil && !d.joinLater(err) {
			return err
		}
	}
	d.rejoinSavedMembers()
	// The restored endpoints' blocks, before their records go out: the
	// other nodes judge a record by its writer's blocks. The cluster
	// watch keeps them held from here on (and the VIPs of services
	// republished below).
	d.holdBlocks()
	d.mu.Lock()
	err = d.republish(saved)
	d.mu.Unlock()
	if err != nil {
		return err
	}
	d.startWatchers(super != nil)
	d.mu.Lock()
	d.startAtDaemonStart()
	d.mu.Unlock()
	d.log.Info("node started", "node", d.cfg.Node, "advertise", d.cfg.Advertise, "data_port", d.cfg.DataPort, "gossip_port", d.cfg.GossipPort)
	return nil
}

// openUnderlays returns the VXLAN and ESP sockets: those the config
// gives (tests), else new ones on the advertised address.
func (d *Daemon) openUnderlays() (ul, eul tunnel.Underlay, err error) {
	ul = d.cfg.Underlay
	if ul == nil {
		u, err := tunnel.ListenUDP(tunnel.UDPConfig{Addr: d.cfg.Advertise, Port: d.cfg.DataPort, RxSockets: d.cfg.RxSockets, BusyPoll: d.cfg.BusyPoll})
		if err != nil {
			return nil, nil, err
		}
		ul = u
	}
	eul = d.cfg.ESPUnderlay
	if eul == nil {
		// With UDP_GRO: a coalesced read is opened datagram by datagram
		// in place, in its one buffer. ESP datagrams are sent from this
		// socket too, from port 4500 to 4500 (RFC 3948).
		u, err := tunnel.ListenUDP(tunnel.UDPConfig{Addr: d.cfg.Advertise, Port: d.cfg.ESPPort, TxFromRx: true, BusyPoll: d.cfg.BusyPoll})
		if err != nil {
			ul.Close()
			return nil, nil, fmt.Errorf("esp port: %w (--esp-port)", err)
		}
		eul = u
	}
	return ul, eul, nil
}

// startDataplane opens the kernel tunnel if it can, makes the egress
// gateway and the data plane on the underlays and runs the data plane;
// it returns the kernel tunnel's writer (nil without one).
func (d *Daemon) startDataplane(ul, eul tunnel.Underlay, tcpSecret []byte) tunnel.SuperWriter {
	super := d.openKernelTunnel(ul)
	d.egress = gateway.NewEgress(gateway.EgressConfig{MaxFlows: d.cfg.EgressMaxFlows, TCPSecret: tcpSecret})
	d.startMeshNAT(tcpSecret)
	d.dp = dataplane.New(dataplane.Options{
		Egress: d.egress,
		Tunnel: tunnel.Config{
			Underlay: ul, DataPort: d.cfg.DataPort, ESPUnderlay: eul, ESPPort: d.cfg.ESPPort,
			Logger: d.log.With("component", "tunnel"), LocalAddr: d.cfg.Advertise,
			Super: super,
		},
		Logger:   d.log.With("component", "dataplane"),
		BusyPoll: d.cfg.BusyPoll,
	})
	d.dp.SetKernelTunnel(d.ktnl.Load().active)
	d.done.Add(1)
	go func() {
		defer d.done.Done()
		d.dp.Run(d.ctx)
	}()
	return super
}

// republish announces again the saved networks and services the cluster
// has never heard of (a standalone node restarting, or the first node of a
// cluster whose nodes all stopped; one deleted elsewhere meanwhile stays
// deleted: the cluster knows its tombstone) and this node's endpoints,
// then sets the data plane up; callers hold d.mu.
func (d *Daemon) republish(saved *savedState) error {
	for _, rec := range saved.Networks {
		if !d.cl.Known(tblNetworks, rec.Name) {
			if err := d.publishNetwork(rec.record()); err != nil {
				return err
			}
		}
	}
	for _, rec := range saved.Services {
		if d.cl.Known(tblServices, rec.Name) {
			continue
		}
		if _, err := validateService(&rec); err != nil {
			d.log.Warn("saved service not announced again", "service", rec.Name, "err", err)
			continue
		}
		b, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		if err := d.cl.Put(tblServices, rec.Name, b); err != nil {
			return fmt.Errorf("service %q: %w", rec.Name, err)
		}
		d.log.Info("service restored from the state", "service", rec.Name, "id", rec.ID)
	}
	for _, c := range d.containers {
		for _, ep := range c.endpoints {
			d.publishEndpoint(ep)
		}
	}
	if err := d.reconcile(); err != nil {
		d.log.Error("data plane", "err", err)
	}
	return nil
}

// startWatchers runs the cluster watch, its block keeper, the
// namespaces' watch, and the firewall's watch (watchFirewall) when the
// kernel tunnel is there or the published-port NAT steers in auto mode.
func (d *Daemon) startWatchers(kernelTunnel bool) {
	d.holdKick = make(chan struct{}, 1)
	d.done.Add(3)
	go func() {
		defer d.done.Done()
		d.watchCluster(d.ctx)
	}()
	go func() {
		defer d.done.Done()
		d.keepBlocks(d.ctx)
	}()
	go func() {
		defer d.done.Done()
		d.watchNamespaces(d.ctx)
	}()
	if m := d.meshNAT.Load(); kernelTunnel || m != nil && m.open && m.mode == MeshNATAuto {
		d.done.Add(1)
		go func() {
			defer d.done.Done()
			d.watchFirewall(d.ctx)
		}()
	}
}

// sweep removes what an interrupted `run` or attach (a daemon killed
// between making a namespace or TAP and saving it) left without a record:
// the named namespaces with this daemon's --netns-prefix that no container
// names (their processes, if any, are left alone), and the unused
// half-made TAP devices in the daemon's namespace. Without a prefix every
// named namespace would match, so none is swept.
func (d *Daemon) sweep() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cfg.NetnsPrefix != "" {
		owned := map[string]bool{}
		for _, c := range d.containers {
			owned[c.netns] = true
		}
		names, err := d.sb.NamedNetns(d.cfg.NetnsPrefix)
		if err != nil {
			d.log.Warn("sweep: listing namespaces", "err", err)
		}
		for _, name := range names {
			if owned[filepath.Join(sandbox.NetnsDir, name)] {
				continue
			}
			if err := d.sb.DeleteNamedNetns(name); err != nil {
				d.log.Warn("sweep: deleting a namespace no container owns", "netns", name, "err", err)
				continue
			}
			d.log.Info("sweep: deleted a namespace no container owns", "netns", name)
		}
	}
	taps, err := d.sb.RemoveUnusedTAPs()
	for _, name := range taps {
		d.log.Info("sweep: deleted an unused TAP device", "ifname", name)
	}
	if err != nil {
		d.log.Warn("sweep: TAP devices", "err", err)
	}
}

// lockStateDir takes an exclusive flock on DIR/lock so that two daemons
// never share a state directory.
func lockStateDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state dir %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("state dir %s: in use by another vxmesh daemon", dir)
	}
	return f, nil
}

// Serve listens on cfg.Socket and serves the API until ctx is done, then
// stops forwarding (containers keep their interfaces) and returns.
func (d *Daemon) Serve(ctx context.Context) error {
	ln, err := listenUnix(d.cfg.Socket)
	if err != nil {
		d.Close()
		return err
	}
	to := d.cfg.apiTimeouts
	srv := &http.Server{
		Handler: readRequestFirst(d.Handler()), ConnContext: withPeerUID,
		ReadHeaderTimeout: to.header, ReadTimeout: to.request, IdleTimeout: to.idle,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	stopMetrics := d.serveMetrics()
	d.log.Info("vxmesh daemon ready", "node", d.cfg.Node, "socket", d.cfg.Socket, "state_dir", d.cfg.StateDir)
	if d.cfg.Ready != nil {
		d.cfg.Ready()
	}
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stopMetrics()
	srv.Shutdown(sctx)
	os.Remove(d.cfg.Socket)
	d.Close()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// listenUnix creates the API socket with mode 0600, replacing a stale
// socket file but refusing one a live daemon still answers on.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	if err := socketAnswers(path); err != nil {
		return nil, err
	}
	os.Remove(path)
	old := unix.Umask(0o177)
	ln, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	return ln, nil
}

// socketAnswers fails if something (another daemon) accepts connections
// on the unix socket at path.
func socketAnswers(path string) error {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return nil
	}
	c.Close()
	return fmt.Errorf("socket %s: another daemon is listening on it", path)
}

// Close leaves the cluster, stops every forwarder and releases the devices
// and the state lock. Persistent TAP devices stay in their namespaces for
// the next start.
func (d *Daemon) Close() {
	d.closeOnce.Do(d.close)
}

func (d *Daemon) close() {
	if d.cancel != nil {
		d.cancel()
	}
	// Reconcilers first: one waiting for the lock would otherwise open
	// again the ports and networks shutdown is taking down.
	d.mu.Lock()
	d.stopping = true
	// The services as the cluster has them now: the reconcile pass that
	// would have saved the latest change may not have run yet.
	if d.cl != nil {
		if err := d.saveServices(); err != nil {
			d.log.Error("saving state", "err", err)
		}
	}
	if d.store != nil {
		d.saveMainProcesses()
	}
	for _, c := range d.containers {
		d.cancelRestart(c) // saved as due: the next start makes it
	}
	d.mu.Unlock()
	if d.prober != nil {
		d.prober.Close() // not under d.mu: it waits for onHealth
	}
	if d.cl != nil {
		if err := d.cl.Leave(2 * time.Second); err != nil {
			d.log.Warn("leaving the cluster", "err", err)
		}
		d.cl.Close()
	}
	d.mu.Lock()
	d.stopResolvers()
	d.closeAllPorts()
	d.fast.closeAll()
	d.closeMesh()
	d.closeGatewayDNS()
	d.mu.Unlock()
	// The data plane closes every endpoint's device (persistent TAPs stay
	// in their namespaces) and takes the networks down.
	if d.dp != nil {
		d.dp.Close()
	}
	if d.egress != nil {
		d.egress.Close()
	}
	if d.metricsLn != nil {
		d.metricsLn.Close()
	}
	d.done.Wait()
	d.removeMountTemplate()
	if d.lock != nil {
		d.lock.Close()
		d.lock = nil
	}
}

// save persists the current state: what changed since the last save is
// appended to the journal (see stateStore); callers hold d.mu.
func (d *Daemon) save() error {
	return d.persist(nil)
}

func (d *Daemon) sortedNetworks() []*localNetwork {
	out := make([]*localNetwork, 0, len(d.networks))
	for _, n := range d.networks {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].rec.Name < out[j].rec.Name })
	return out
}

func (d *Daemon) sortedContainers() []*container {
	out := make([]*container, 0, len(d.containers))
	for _, c := range d.containers {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// defaultRouteInterface names the interface holding the IPv4 default
// route, or "" when there is none.
func defaultRouteInterface() string {
	b, err := os.ReadFile("/proc/net/route")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n")[1:] {
		var name, dst string
		if _, err := fmt.Sscan(l, &name, &dst); err == nil && dst == "00000000" {
			return name
		}
	}
	return ""
}

// detectAdvertise returns the first IPv4 address of the default-route
// interface, or 127.0.0.1 for a host without one.
func detectAdvertise() netip.Addr {
	if ifc, err := net.InterfaceByName(defaultRouteInterface()); err == nil {
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
				return p.Addr()
			}
		}
	}
	return netip.AddrFrom4([4]byte{127, 0, 0, 1})
}

// underlayMTU returns the MTU of the interface that holds addr, or 1500
// when no interface does (or it is loopback's).
func underlayMTU(addr netip.Addr) int {
	if mtu, _, ok := underlayIfc(addr); ok && mtu >= 576 {
		return mtu
	}
	return 1500
}

// underlayIfc returns the MTU of the interface that holds addr and the
// prefix addr has there (the underlay's LAN); ok is false when no
// interface but loopback holds it.
func underlayIfc(addr netip.Addr) (mtu int, lan netip.Prefix, ok bool) {
	ifcs, _ := net.Interfaces()
	for _, ifc := range ifcs {
		if ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr() == addr {
				return ifc.MTU, p.Masked(), true
			}
		}
	}
	return 0, netip.Prefix{}, false
}
