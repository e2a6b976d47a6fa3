package daemon

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vxmesh/vxmesh/cluster"
	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/lb/health"
	"github.com/vxmesh/vxmesh/packet"
)

// Services (docs/architecture.md, "Services"). A service is a record of
// the services table (cluster-wide, like networks: it outlives the node
// that created it), keyed by name: its networks with a VIP on each (none
// with endpoint mode dnsrr) and its policy. Backends are not in it: an
// endpoint's own record (written by its node, inside that node's address
// blocks) lists the services it joined, by name and ID, with a weight and
// the state and health its node reports. A service name is confirmed
// cluster-unique with a claim (tblSvcClaims) before the record is
// published, as network names are.
const (
	tblServices   = "services"
	tblSvcClaims  = "service-claims"
	svcClaimGroup = "svc"
)

// Service defaults and bounds.
const (
	// DefaultStopGrace is how long a leaving backend keeps its
	// connections (Docker's default stop timeout).
	DefaultStopGrace = 10 * time.Second
	// DefaultServiceTTL is the TTL of a service's DNS answers: short,
	// so that dnsrr clients see backends come and go within seconds
	// (Docker answers services with TTL 600 and cannot change it).
	DefaultServiceTTL = 10 * time.Second
	// DefaultAffinityTimeout is client-ip affinity's timeout when none is
	// given (IPVS persistence's default).
	DefaultAffinityTimeout = 5 * time.Minute
	maxStopGrace           = time.Hour
	maxServiceTTL          = 24 * time.Hour
	maxAffinity            = 7 * 24 * time.Hour
	maxServiceNetworks     = 64
	maxServiceMemberships  = 64
	maxServiceNameLength   = 63
)

// Endpoint modes.
const (
	modeVIP   = "vip"
	modeDNSRR = "dnsrr"
)

// Backend states and health, as an endpoint's node writes them.
const (
	backendActive    = "active"
	backendDraining  = "draining"
	backendHealthy   = "healthy"
	backendUnhealthy = "unhealthy"
	// backendStarting: a new backend of a service with a check, before
	// its first check passed; not ready (ejected, out of DNS).
	backendStarting = "starting"
)

// knownHealth reports whether h is a health a record may carry.
func knownHealth(h string) bool {
	return h == backendHealthy || h == backendUnhealthy || h == backendStarting
}

// validServiceName is a DNS label: letters, digits, '-' and '_', no dot,
// so that NAME.NETWORK and tasks.NAME parse one way only.
var validServiceName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_-]*$`)

func checkServiceName(name string) error {
	if name == "" {
		return invalid("service name: empty")
	}
	if len(name) > maxServiceNameLength || !validServiceName.MatchString(name) {
		return invalid("service %q: invalid name (letters, digits, '_', '-'; at most %d characters; no '.')", name, maxServiceNameLength)
	}
	if strings.EqualFold(name, "tasks") {
		return invalid("service %q: reserved name (tasks.NAME answers a service's backends)", name)
	}
	return nil
}

// svcRecord is a service as replicated to every node (the value of a
// services table entry, keyed by Name). Every field is in its canonical
// form (see validateService); fields are only added, with omitempty.
type svcRecord struct {
	Name string `json:"name"`
	ID   string `json:"id"`
	Mode string `json:"endpoint_mode"`
	// VIPs are the service's networks, sorted by name, each with its VIP
	// (empty with dnsrr).
	VIPs      []svcVIP  `json:"vips"`
	Scheduler string    `json:"scheduler"`
	Affinity  string    `json:"affinity,omitempty"`
	Ports     []string  `json:"ports,omitempty"`
	Health    string    `json:"health,omitempty"`
	StopGrace string    `json:"stop_grace_period"`
	DNSTTL    string    `json:"dns_ttl"`
	Created   time.Time `json:"created"`
	CreatedBy string    `json:"created_by"`
	// Publish are the service's published ports (the routing mesh), each
	// in its canonical form: published=P,target=T,protocol=tcp|udp,
	// mode=ingress|host,client-ip=preserve|snat|proxy-v2.
	Publish []string `json:"publish,omitempty"`
}

// svcVIP is a service's network and its VIP there.
type svcVIP struct {
	Network string `json:"network"`
	VIP     string `json:"vip,omitempty"`
}

// svcSpec is a validated service record with its fields parsed.
type svcSpec struct {
	rec       svcRecord
	vips      map[string]netip.Addr // by network; invalid addresses with dnsrr
	sched     lb.Scheduler
	affinity  time.Duration
	ports     []lb.Port
	stopGrace time.Duration
	ttl       time.Duration
	health    health.Spec // zero: no check
	publish   []meshPort
}

// publishes reports whether the service has published ports: every host
// then has a gateway identity (dataplane.NetworkConfig.GatewayHost) on
// the service's networks.
func (s *svcSpec) publishes() bool { return len(s.rec.Publish) > 0 }

// onNetwork reports whether the service has network.
func (s *svcSpec) onNetwork(network string) bool {
	_, ok := s.vips[network]
	return ok
}

func (s *svcSpec) networks() []string {
	out := make([]string, len(s.rec.VIPs))
	for i, v := range s.rec.VIPs {
		out[i] = v.Network
	}
	return out
}

// parseServicePort parses PORT[/PROTO] or PORT:TARGET[/PROTO] (PROTO tcp,
// the default, or udp): PORT on the VIP goes to TARGET on a backend.
func parseServicePort(s string) (lb.Port, string, error) {
	spec, proto, hasProto := strings.Cut(s, "/")
	p := lb.Port{Proto: packet.ProtoTCP}
	switch {
	case !hasProto || proto == "tcp":
	case proto == "udp":
		p.Proto = packet.ProtoUDP
	default:
		return p, "", fmt.Errorf("port %q: protocol %q: want tcp or udp", s, proto)
	}
	vip, target, hasTarget := strings.Cut(spec, ":")
	port, err := parsePortNumber(vip)
	if err != nil {
		return p, "", fmt.Errorf("port %q: %w", s, err)
	}
	p.Port = port
	if hasTarget {
		t, err := parsePortNumber(target)
		if err != nil {
			return p, "", fmt.Errorf("port %q: target: %w", s, err)
		}
		if t != port {
			p.Target = t
		}
	}
	name := "tcp"
	if p.Proto == packet.ProtoUDP {
		name = "udp"
	}
	canon := strconv.Itoa(int(p.Port)) + "/" + name
	if p.Target != 0 {
		canon = strconv.Itoa(int(p.Port)) + ":" + strconv.Itoa(int(p.Target)) + "/" + name
	}
	return p, canon, nil
}

// parsePortNumber parses a port 1-65535 written in plain decimal.
func parsePortNumber(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 || strconv.FormatUint(n, 10) != s {
		return 0, fmt.Errorf("%q: want a port 1-65535", s)
	}
	return uint16(n), nil
}

// parsePorts parses a service's ports and returns them with their
// canonical forms, sorted; a VIP port listed twice is an error.
func parsePorts(in []string) ([]lb.Port, []string, error) {
	if len(in) > lb.MaxPorts {
		return nil, nil, fmt.Errorf("%d ports, at most %d", len(in), lb.MaxPorts)
	}
	type pc struct {
		p lb.Port
		s string
	}
	var all []pc
	for _, s := range in {
		p, c, err := parseServicePort(s)
		if err != nil {
			return nil, nil, err
		}
		for _, o := range all {
			if o.p.Port == p.Port && o.p.Proto == p.Proto {
				return nil, nil, fmt.Errorf("port %q: %s listed twice", s, o.s)
			}
		}
		all = append(all, pc{p, c})
	}
	slices.SortFunc(all, func(a, b pc) int {
		if a.p.Proto != b.p.Proto {
			return int(a.p.Proto) - int(b.p.Proto)
		}
		return int(a.p.Port) - int(b.p.Port)
	})
	ports, canon := make([]lb.Port, len(all)), make([]string, len(all))
	for i, x := range all {
		ports[i], canon[i] = x.p, x.s
	}
	return ports, canon, nil
}

// parseAffinity parses "", none, client-ip or client-ip:TIMEOUT and
// returns the timeout (0: none) and the canonical form.
func parseAffinity(s string) (time.Duration, string, error) {
	if s == "" || s == "none" {
		return 0, "", nil
	}
	kind, timeout, hasTimeout := strings.Cut(s, ":")
	if kind != "client-ip" {
		return 0, "", fmt.Errorf("affinity %q: want client-ip or client-ip:TIMEOUT", s)
	}
	d := DefaultAffinityTimeout
	if hasTimeout {
		var err error
		if d, err = time.ParseDuration(timeout); err != nil || d < time.Second || d > maxAffinity {
			return 0, "", fmt.Errorf("affinity %q: timeout %q: want a duration from 1s to %s", s, timeout, maxAffinity)
		}
	}
	return d, "client-ip:" + d.String(), nil
}

// parseHealth builds the canonical health check (health.Spec.String)
// from --health-tcp PORT (0: none) or --health-http :PORT/PATH, with
// lb/health's parser, the one that also reads records.
func parseHealth(tcpPort int, http string) (string, error) {
	switch {
	case tcpPort != 0 && http != "":
		return "", fmt.Errorf("health check: --health-tcp and --health-http: choose one")
	case tcpPort != 0:
		if tcpPort < 1 || tcpPort > 65535 {
			return "", fmt.Errorf("health check: tcp port %d: want 1-65535", tcpPort)
		}
		sp, err := health.ParseTCP(strconv.Itoa(tcpPort))
		if err != nil {
			return "", err
		}
		return sp.String(), nil
	case http != "":
		sp, err := health.ParseHTTP(http)
		if err != nil {
			return "", err
		}
		return sp.String(), nil
	}
	return "", nil
}

// checkHealth parses a record's health check, which must be in the
// canonical form health.Spec.String writes ("": no check).
func checkHealth(h string) (health.Spec, error) {
	if h == "" {
		return health.Spec{}, nil
	}
	sp, err := health.Parse(h)
	if err != nil {
		return health.Spec{}, err
	}
	if sp.String() != h {
		return health.Spec{}, fmt.Errorf("health check %q: not canonical (%q)", h, sp.String())
	}
	return sp, nil
}

// parseDuration parses a --stop-grace-period or --dns-ttl value within
// [0, max]; whole seconds only when wholeSeconds.
func parseDuration(what, s string, def, max time.Duration, wholeSeconds bool) (time.Duration, error) {
	if s == "" {
		return def, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 || d > max {
		return 0, fmt.Errorf("%s %q: want a duration from 0s to %s", what, s, max)
	}
	if wholeSeconds && d%time.Second != 0 {
		return 0, fmt.Errorf("%s %q: want whole seconds", what, s)
	}
	return d, nil
}

// parseVIP checks an address for a service's VIP: IPv4, canonical,
// unicast (what lb.Service.Validate takes).
func parseVIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() || a.String() != s {
		return netip.Addr{}, fmt.Errorf("vip %q: not an IPv4 address", s)
	}
	if a.IsUnspecified() || a.IsMulticast() {
		return netip.Addr{}, fmt.Errorf("vip %q: not a unicast address", s)
	}
	return a, nil
}

// validateService checks a complete service record: what CreateService
// and UpdateService build and what the services table holds go through
// it, so a record is used only if the API would have made it. Whether a
// VIP lies in its network's subnet is checked where the network is known
// (vipUsable).
func validateService(rec *svcRecord) (*svcSpec, error) {
	if err := checkServiceName(rec.Name); err != nil {
		return nil, err
	}
	if _, err := hex.DecodeString(rec.ID); err != nil || len(rec.ID) != 2*networkIDBytes || strings.ToLower(rec.ID) != rec.ID {
		return nil, fmt.Errorf("service %q: id %q: not %d lower-case hex digits", rec.Name, rec.ID, 2*networkIDBytes)
	}
	s := &svcSpec{rec: *rec, vips: map[string]netip.Addr{}}
	if rec.Mode != modeVIP && rec.Mode != modeDNSRR {
		return nil, fmt.Errorf("service %q: endpoint mode %q: want vip or dnsrr", rec.Name, rec.Mode)
	}
	if err := s.checkVIPs(); err != nil {
		return nil, err
	}
	var err error
	if s.sched, err = lb.ParseScheduler(rec.Scheduler); err != nil || s.sched.String() != rec.Scheduler {
		return nil, fmt.Errorf("service %q: scheduler %q: want rr, wrr, lc, p2c or maglev", rec.Name, rec.Scheduler)
	}
	var canon string
	if s.affinity, canon, err = parseAffinity(rec.Affinity); err != nil || canon != rec.Affinity {
		return nil, fmt.Errorf("service %q: affinity %q: not a canonical client-ip:TIMEOUT", rec.Name, rec.Affinity)
	}
	var ports []string
	if s.ports, ports, err = parsePorts(rec.Ports); err != nil {
		return nil, fmt.Errorf("service %q: %w", rec.Name, err)
	}
	if !slices.Equal(ports, rec.Ports) {
		return nil, fmt.Errorf("service %q: ports %v: not sorted and canonical", rec.Name, rec.Ports)
	}
	var publish []string
	if s.publish, publish, err = parseMeshPorts(rec.Publish, s.ports, rec.Mode); err != nil {
		return nil, fmt.Errorf("service %q: %w", rec.Name, err)
	}
	if !slices.Equal(publish, rec.Publish) {
		return nil, fmt.Errorf("service %q: published ports %v: not sorted and canonical", rec.Name, rec.Publish)
	}
	if s.health, err = checkHealth(rec.Health); err != nil {
		return nil, fmt.Errorf("service %q: %w", rec.Name, err)
	}
	if s.stopGrace, err = parseDuration("stop grace period", rec.StopGrace, -1, maxStopGrace, false); err != nil || s.stopGrace.String() != rec.StopGrace {
		return nil, fmt.Errorf("service %q: stop grace period %q: want a canonical duration from 0s to %s", rec.Name, rec.StopGrace, maxStopGrace)
	}
	if s.ttl, err = parseDuration("dns ttl", rec.DNSTTL, -1, maxServiceTTL, true); err != nil || s.ttl.String() != rec.DNSTTL {
		return nil, fmt.Errorf("service %q: dns ttl %q: want a canonical whole-second duration from 0s to %s", rec.Name, rec.DNSTTL, maxServiceTTL)
	}
	if rec.CreatedBy == "" || len(rec.CreatedBy) > 255 {
		return nil, fmt.Errorf("service %q: created by %q: not a node name", rec.Name, rec.CreatedBy)
	}
	return s, nil
}

// checkVIPs checks the networks and VIPs of s.rec and fills s.vips.
func (s *svcSpec) checkVIPs() error {
	rec := &s.rec
	if len(rec.VIPs) == 0 || len(rec.VIPs) > maxServiceNetworks {
		return fmt.Errorf("service %q: %d networks: want 1 to %d", rec.Name, len(rec.VIPs), maxServiceNetworks)
	}
	seen := map[netip.Addr]bool{}
	for i, v := range rec.VIPs {
		if err := checkName("network", v.Network); err != nil {
			return fmt.Errorf("service %q: %w", rec.Name, err)
		}
		if i > 0 && rec.VIPs[i-1].Network >= v.Network {
			return fmt.Errorf("service %q: networks not sorted and unique", rec.Name)
		}
		if rec.Mode == modeDNSRR {
			if v.VIP != "" {
				return fmt.Errorf("service %q: network %q: a dnsrr service has no VIP", rec.Name, v.Network)
			}
			s.vips[v.Network] = netip.Addr{}
			continue
		}
		a, err := parseVIP(v.VIP)
		if err != nil {
			return fmt.Errorf("service %q: network %q: %w", rec.Name, v.Network, err)
		}
		if seen[a] {
			return fmt.Errorf("service %q: vip %s used on two networks", rec.Name, a)
		}
		seen[a] = true
		s.vips[v.Network] = a
	}
	return nil
}

// decodeService decodes and validates a services-table entry.
func decodeService(e cluster.Entry) (*svcSpec, error) {
	var rec svcRecord
	if err := json.Unmarshal(e.Value, &rec); err != nil {
		return nil, fmt.Errorf("service %q: %w", e.Key, err)
	}
	if rec.Name != e.Key {
		return nil, fmt.Errorf("service %q: the record names service %q", e.Key, rec.Name)
	}
	return validateService(&rec)
}

// epService is an endpoint's membership of a service, in its endpoint
// record: the service's name and ID (a service removed and created again
// under the same name has another ID, and its old members are not its
// backends), the weight, and what the endpoint's node reports: state
// active or draining (leaving), health starting, healthy or unhealthy.
type epService struct {
	Name   string `json:"name"`
	ID     string `json:"id"`
	Weight int    `json:"weight"`
	State  string `json:"state"`
	Health string `json:"health"`
}

// checkMemberships validates the service memberships of an endpoint
// record.
func checkMemberships(key string, ms []epService) error {
	if len(ms) > maxServiceMemberships {
		return fmt.Errorf("endpoint %q: %d services, at most %d", key, len(ms), maxServiceMemberships)
	}
	for i, m := range ms {
		if err := checkServiceName(m.Name); err != nil {
			return fmt.Errorf("endpoint %q: %w", key, err)
		}
		if _, err := hex.DecodeString(m.ID); err != nil || len(m.ID) != 2*networkIDBytes {
			return fmt.Errorf("endpoint %q: service %q: id %q: not %d hex digits", key, m.Name, m.ID, 2*networkIDBytes)
		}
		if m.Weight < 1 || m.Weight > lb.MaxWeight {
			return fmt.Errorf("endpoint %q: service %q: weight %d: want 1-%d", key, m.Name, m.Weight, lb.MaxWeight)
		}
		if m.State != backendActive && m.State != backendDraining {
			return fmt.Errorf("endpoint %q: service %q: state %q: want active or draining", key, m.Name, m.State)
		}
		if !knownHealth(m.Health) {
			return fmt.Errorf("endpoint %q: service %q: health %q: want starting, healthy or unhealthy", key, m.Name, m.Health)
		}
		for _, o := range ms[:i] {
			if strings.EqualFold(o.Name, m.Name) {
				return fmt.Errorf("endpoint %q: service %q joined twice", key, m.Name)
			}
		}
	}
	return nil
}

// svcMember is a local endpoint's membership of a service; state and
// health are this node's to say. Health (backendStarting, -Healthy or
// -Unhealthy) is persisted, so a restarted daemon publishes what it last
// did until its checks say otherwise; draining is not (a restarted
// daemon's backends start active).
type svcMember struct {
	name, id string
	weight   int
	draining bool
	health   string
}

func (m svcMember) record() epService {
	e := epService{Name: m.name, ID: m.id, Weight: m.weight, State: backendActive, Health: m.health}
	if m.draining {
		e.State = backendDraining
	}
	if !knownHealth(e.Health) {
		e.Health = backendHealthy
	}
	return e
}

// savedSvcMember is a membership in state.json.
type savedSvcMember struct {
	Name   string `json:"name"`
	ID     string `json:"id"`
	Weight int    `json:"weight"`
	// Health is the health last published ("" in older files: healthy).
	Health string `json:"health,omitempty"`
}
