package health

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Kind is what a check does.
type Kind uint8

// Check kinds.
const (
	// TCP passes when a connection to the port is accepted.
	TCP Kind = iota + 1
	// HTTP passes when GET Path on the port answers 200-399.
	HTTP
)

// String is the kind's name in the text form: "tcp" or "http".
func (k Kind) String() string {
	switch k {
	case TCP:
		return "tcp"
	case HTTP:
		return "http"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Defaults and limits of a Spec.
const (
	DefaultInterval  = 2 * time.Second
	DefaultTimeout   = time.Second
	DefaultHealthy   = 2 // successes in a row that bring an unhealthy backend back
	DefaultUnhealthy = 3 // failures in a row that make a backend unhealthy

	MinInterval  = 10 * time.Millisecond
	MaxInterval  = time.Hour
	MinTimeout   = time.Millisecond
	MaxThreshold = 100
	MaxPath      = 1024 // bytes
)

// Spec is a service's active health check, run against each backend.
// The zero Spec is no check.
type Spec struct {
	Kind Kind
	Port uint16
	// Path is the HTTP request target, "/" or longer, sent as is; "" for
	// TCP.
	Path string
	// Interval is the time between the end of one check and the start
	// of the next (jittered by ±10%).
	Interval time.Duration
	// Timeout bounds one check: connect, request and response.
	Timeout time.Duration
	// Healthy is how many successes in a row bring an unhealthy backend
	// back; Unhealthy how many failures in a row make a backend unhealthy.
	Healthy, Unhealthy int
}

// IsZero reports whether s is no check.
func (s Spec) IsZero() bool { return s == Spec{} }

// ParseTCP parses the value of --health-tcp: "PORT", optionally followed
// by options (see Parse).
func ParseTCP(value string) (Spec, error) { return parse("tcp", value) }

// ParseHTTP parses the value of --health-http: ":PORT/PATH" (also
// "PORT/PATH", and ":PORT" or "PORT" for the path "/"), optionally
// followed by options (see Parse).
func ParseHTTP(value string) (Spec, error) { return parse("http", value) }

// Parse parses the text form String writes: the kind, a colon and the
// flag's value ("tcp:8080", "http::8080/healthz"), then optional
// space-separated options interval=DURATION, timeout=DURATION,
// healthy=N and unhealthy=N; fields not given get their defaults (the
// timeout at most the interval). The error is one line naming the input
// and the cause.
func Parse(s string) (Spec, error) {
	kind, value, _ := strings.Cut(s, ":")
	switch kind {
	case "tcp", "http":
		return parse(kind, value)
	}
	return Spec{}, fmt.Errorf("health check %q: want tcp:PORT or http::PORT/PATH", s)
}

func parse(kind, value string) (Spec, error) {
	sp, err := parseValue(kind, value)
	if err != nil {
		return Spec{}, fmt.Errorf("health check %s %q: %w", kind, value, err)
	}
	return sp, nil
}

func parseValue(kind, value string) (Spec, error) {
	fields := strings.Split(value, " ")
	sp := Spec{Interval: DefaultInterval, Timeout: DefaultTimeout, Healthy: DefaultHealthy, Unhealthy: DefaultUnhealthy}
	target := fields[0]
	if kind == "tcp" {
		sp.Kind = TCP
	} else {
		sp.Kind = HTTP
		target = strings.TrimPrefix(target, ":")
		sp.Path = "/"
		if i := strings.IndexByte(target, '/'); i >= 0 {
			target, sp.Path = target[:i], target[i:]
		}
		if err := checkPath(sp.Path); err != nil {
			return Spec{}, err
		}
	}
	port, err := strconv.ParseUint(target, 10, 16)
	if err != nil || port == 0 {
		return Spec{}, fmt.Errorf("port %q: want 1-65535", target)
	}
	sp.Port = uint16(port)
	seen := map[string]bool{}
	for _, opt := range fields[1:] {
		k, v, ok := strings.Cut(opt, "=")
		if !ok {
			return Spec{}, fmt.Errorf("option %q: want key=value", opt)
		}
		if seen[k] {
			return Spec{}, fmt.Errorf("option %q given twice", k)
		}
		seen[k] = true
		if err := sp.setOption(k, v); err != nil {
			return Spec{}, fmt.Errorf("option %q: %w", k, err)
		}
	}
	if !seen["timeout"] && sp.Interval < sp.Timeout {
		sp.Timeout = sp.Interval // a shorter interval bounds the default timeout
	}
	return sp, sp.validate()
}

func (s *Spec) setOption(k, v string) error {
	switch k {
	case "interval", "timeout":
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("duration %q", v)
		}
		if k == "interval" {
			s.Interval = d
		} else {
			s.Timeout = d
		}
	case "healthy", "unhealthy":
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("count %q", v)
		}
		if k == "healthy" {
			s.Healthy = n
		} else {
			s.Unhealthy = n
		}
	default:
		return errors.New("unknown (want interval, timeout, healthy or unhealthy)")
	}
	return nil
}

// checkPath allows a request target of visible ASCII starting with '/',
// without a fragment: it goes on the request line as is.
func checkPath(p string) error {
	if len(p) > MaxPath {
		return fmt.Errorf("path longer than %d bytes", MaxPath)
	}
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("path %q: must start with /", p)
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c <= ' ' || c >= 0x7f || c == '#' {
			return fmt.Errorf("path %q: byte %q not allowed (escape it as %%%02X)", p, c, c)
		}
	}
	return nil
}

// Validate reports the first problem that makes s unusable as a check,
// in one line.
func (s Spec) Validate() error {
	if err := s.validate(); err != nil {
		return fmt.Errorf("health check %q: %w", s.String(), err)
	}
	return nil
}

func (s Spec) validate() error {
	switch s.Kind {
	case TCP:
		if s.Path != "" {
			return errors.New("a tcp check has no path")
		}
	case HTTP:
		if err := checkPath(s.Path); err != nil {
			return err
		}
	default:
		return fmt.Errorf("kind %d: want tcp or http", s.Kind)
	}
	switch {
	case s.Port == 0:
		return errors.New("port 0")
	case s.Interval < MinInterval || s.Interval > MaxInterval:
		return fmt.Errorf("interval %v: want %v to %v", s.Interval, MinInterval, MaxInterval)
	case s.Timeout < MinTimeout || s.Timeout > s.Interval:
		return fmt.Errorf("timeout %v: want %v to the interval (%v)", s.Timeout, MinTimeout, s.Interval)
	case s.Healthy < 1 || s.Healthy > MaxThreshold:
		return fmt.Errorf("healthy %d: want 1 to %d", s.Healthy, MaxThreshold)
	case s.Unhealthy < 1 || s.Unhealthy > MaxThreshold:
		return fmt.Errorf("unhealthy %d: want 1 to %d", s.Unhealthy, MaxThreshold)
	}
	return nil
}

// String is the text form Parse reads: "tcp:8080" or "http::8080/healthz",
// followed by the options that differ from their defaults. The zero Spec
// is "". With the flag's name in front of everything after the kind, it
// is the command line: --health-http ":8080/healthz interval=5s".
func (s Spec) String() string {
	if s.IsZero() {
		return ""
	}
	var b strings.Builder
	b.WriteString(s.Kind.String())
	b.WriteByte(':')
	b.WriteString(s.FlagValue())
	if s.Interval != DefaultInterval {
		b.WriteString(" interval=" + s.Interval.String())
	}
	if s.Timeout != DefaultTimeout {
		b.WriteString(" timeout=" + s.Timeout.String())
	}
	if s.Healthy != DefaultHealthy {
		b.WriteString(" healthy=" + strconv.Itoa(s.Healthy))
	}
	if s.Unhealthy != DefaultUnhealthy {
		b.WriteString(" unhealthy=" + strconv.Itoa(s.Unhealthy))
	}
	return b.String()
}

// FlagValue is the port and path as the flag takes them, without options:
// "8080" (--health-tcp) or ":8080/healthz" (--health-http).
func (s Spec) FlagValue() string {
	if s.Kind == HTTP {
		return ":" + strconv.Itoa(int(s.Port)) + s.Path
	}
	return strconv.Itoa(int(s.Port))
}
