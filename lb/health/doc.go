// Package health runs a service's active health checks (--health-tcp,
// --health-http) against the backends on this host and reports when one
// becomes healthy or unhealthy. It lives beside lb, not in it: lb's packet
// path imports only packet and never blocks, while checks dial, wait and
// run goroutines. It imports neither lb, dns nor cluster; the daemon joins
// them (see "Wiring" below).
//
// # Spec
//
// A Spec is what to check: TCP (a connect to the port is accepted) or
// HTTP (GET Path answers 200-399), the Interval between checks (default
// 2 s, jittered ±10%), the Timeout of one check (default 1 s, at most the
// interval) and the thresholds: Unhealthy failures in a row (default 3)
// make a backend unhealthy, Healthy successes in a row (default 2) bring
// it back. ParseTCP and ParseHTTP read the flag values:
//
//	--health-tcp 8080
//	--health-http :8080/healthz   (also 8080/healthz; :8080 and 8080 mean the path /)
//
// A flag value may carry options after spaces, "8080 interval=5s
// timeout=2s healthy=1 unhealthy=5", for callers that offer no separate
// flags. Spec.String writes the text form, the kind and a colon first
// ("tcp:8080", "http::8080/healthz", then the options that differ from
// the defaults, "http::8080/healthz interval=5s"), which Parse reads back
// to the same Spec (FuzzParse); store that in records. The zero Spec is
// no check, and its String is "".
//
// # Prober
//
// A Prober checks Targets (a key, the backend's address, its Spec and a
// DialFunc), each on one goroutine of its own that sleeps between checks:
// goroutines are one per target plus one that delivers events, and a
// check that hangs ends at its Timeout. Checks dial through the target's
// DialFunc, so the daemon can make them from inside the backend's own
// network namespace (sandbox.NetnsDialer), to the backend's address, the
// one clients use: the check sees what a client would, without crossing
// the overlay. An HTTP check sends one HTTP/1.1 request (Host: the
// backend's IP:port, Connection: close), reads at most 64 KiB of the
// answer and closes the connection.
//
// A new target starts Starting: not ready, like a Kubernetes readiness
// probe, so a backend with a check gets no traffic before it answers.
// Its first check runs within a tenth of its interval, and its first
// success makes it Healthy; Unhealthy failures in a row make it
// Unhealthy, and then Healthy successes in a row bring it back. (A
// service without a check has no targets here: its backends are ready at
// once, as in Docker Swarm.)
//
// SetTargets replaces the whole set at once: targets with the same key,
// address and spec keep running untouched (state, counters and timer);
// one whose spec or address changed keeps its state and counts afresh;
// removed ones stop. Every state change goes to the callback given to
// NewProber as an Event (key, state, reason such as "connection refused",
// "http 503", "timeout" or "connected"), one call at a time, from a
// goroutine that holds no lock of the Prober (the callback may call
// SetTargets, not Close); Status lists
// the current state of every target for `service ps`. Close stops
// everything and waits for every goroutine.
//
// # Wiring
//
// On each host the daemon keeps one Prober with a Target for every local
// backend of a service that has a check: Key the backend instance
// (container, network, service and the namespace's inode: see
// Target.Key), Addr its address on the service's network, Dial
// sandbox.NetnsDialer(its namespace). The callback writes the result
// into the backend's own endpoint record (written by its host only,
// gossiped like the rest of the record). Every host maps that field into
// the data plane and DNS: starting or unhealthy is lb.Ejected (no new
// connections; UDP flows move at once) and out of DNS answers; healthy
// is lb.Active; no check (an empty field) is lb.Active too.
package health
