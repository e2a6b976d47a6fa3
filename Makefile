# vxmesh build, test and measurement entry points. `make help` lists them.

SHELL     := /bin/bash
GO        ?= go
BIN       := bin/vxmesh
CNI_BIN   := bin/vxmesh-cni
RACE_BIN  := bin/vxmesh-race
FUZZTIME  ?= 5s
DURATION  ?= 10s
# bench-lb (and bench) also write the load-balancer report as JSON here.
LB_JSON   ?= bin/bench-lb.json
# make bench WIREGUARD_GO=path adds the wireguard-go row (the anchor of
# vxmesh-esp): GOBIN=$$(mktemp -d) go install golang.zx2c4.com/wireguard@latest
WIREGUARD_GO ?=
# bench-dns repeats its runs this many times, interleaved, and prints the
# median ratios (one run pair says little on a loaded machine).
DNS_ROUNDS ?= 3
PKGS      ?= ./...
# make bench-scale: namespace hosts, one daemon each (3 to 250).
HOSTS     ?= 100
# make bench-scale-sim: the simulated cluster sizes (a regexp alternation).
SIM_NODES ?= 10|100|1000
# make bench-scale-sim: the time dilation K (every timer of every node
# stretched K times; 0 chooses it from the node count) and the wall-clock
# bound of each phase.
SIM_SLOW    ?= 0
SIM_TIMEOUT ?= 30m
# make bench-scale-sim: the wall-clock bound of the formation (0: SIM_TIMEOUT);
# the next phases start at it even if a few nodes still miss members.
SIM_FORM_TIMEOUT ?= 0
# The version `vxmesh version` prints (linked into main.version).
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS   := -X main.version=$(VERSION)
# make install puts the binaries in $(DESTDIR)$(PREFIX)/bin and the CNI
# plugin in $(DESTDIR)$(CNI_DIR).
PREFIX    ?= /usr/local
DESTDIR   ?=
CNI_DIR   ?= /opt/cni/bin
# As root, tests that need the machine (TAP devices, namespaces, tools) must
# run: a missing requirement fails instead of skipping (internal/testenv,
# which also lists the optional kernel features that may still skip).
E2E_REQUIRE ?= $(shell [ "$$(id -u)" = 0 ] && echo 1 || echo 0)

.PHONY: help deps build install uninstall test unit e2e bench bench-dns bench-lb bench-scale bench-scale-sim fuzz lint demo clean

help:
	@echo "make deps    install the Debian packages the demo and e2e tests need (root)"
	@echo "make build   build $(BIN) and the CNI plugin $(CNI_BIN)"
	@echo "make install install $(BIN) to $(DESTDIR)$(PREFIX)/bin and vxmesh-cni to $(DESTDIR)$(CNI_DIR)"
	@echo "make test    unit tests (-race) for every package, then the e2e tests (root)"
	@echo "make unit    unit tests only"
	@echo "make e2e     end-to-end tests through the CLI on network namespaces (root)"
	@echo "make bench   vxmesh vs Linux bridge throughput and RTT, then the bench-lb section (root; DURATION=$(DURATION))"
	@echo "make bench-dns  resolver 127.0.0.11 vs dnsmasq with dnsperf (root; DURATION=$(DURATION) per run, DNS_ROUNDS=$(DNS_ROUNDS) rounds)"
	@echo "make bench-lb   service VIP vs direct, HAProxy and nftables DNAT (iperf3, wrk), lb cost 1..10,000 services (root; DURATION=$(DURATION) per run; JSON in $(LB_JSON))"
	@echo "make bench-scale  HOSTS=$(HOSTS) daemons in one cluster: network/endpoint propagation, failure detection, gossip bytes per node at rest and under 100 endpoint changes/s (root)"
	@echo "make bench-scale-sim  root-less simulation of 10, 100 and 1,000 cluster nodes in one process (go test -bench ScaleSim ./cluster)"
	@echo "make fuzz    every Fuzz target for FUZZTIME=$(FUZZTIME)"
	@echo "make lint    gofmt and go vet"
	@echo "make demo    build, then run the demo (root)"

deps:
	@bash .ci/deps

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/vxmesh
	$(GO) build -o $(CNI_BIN) ./cmd/vxmesh-cni

# The systemd unit (contrib/systemd/vxmesh.service) runs $(PREFIX)/bin/vxmesh;
# copy it to /etc/systemd/system if PREFIX is not /usr/local.
install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(CNI_DIR)
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/vxmesh
	install -m 0755 $(CNI_BIN) $(DESTDIR)$(CNI_DIR)/vxmesh-cni

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/vxmesh $(DESTDIR)$(CNI_DIR)/vxmesh-cni

test: deps unit e2e

# The twenty-daemon scale test skips under -race (twenty race-instrumented
# daemons starve each other on two cores), so it runs once more without.
unit:
	VXMESH_E2E_REQUIRE=$(E2E_REQUIRE) $(GO) test -race -count=1 $$($(GO) list ./... | grep -v '/e2e$$')
	$(GO) test -count=1 -timeout 10m ./daemon -run 'TestNetworksSpanMoreThanSixteenHosts'

# The daemon under test is built with the race detector too: a data race in
# it makes its exit status non-zero, which the tests report on clean stops.
e2e:
	$(GO) build -race -ldflags '$(LDFLAGS)' -o $(RACE_BIN) ./cmd/vxmesh
	VXMESH_BIN=$(CURDIR)/$(RACE_BIN) VXMESH_E2E_REQUIRE=$(E2E_REQUIRE) \
		$(GO) test -race -count=1 -timeout 15m -v ./e2e 2>&1 | \
		grep -v -e '^=== \(RUN\|PAUSE\|CONT\)' ; exit $${PIPESTATUS[0]}

# The benchmarks' tools (iperf3, wrk, haproxy, nft, ...) are installed by
# `.ci/deps bench` when missing (as root; otherwise it says what is missing).
bench: build
	@bash .ci/deps bench
	$(GO) run ./bench -binary $(BIN) -duration $(DURATION) -json $(LB_JSON) -wireguard-go '$(WIREGUARD_GO)'

bench-dns: build
	@bash .ci/deps bench
	$(GO) run ./bench -dns -binary $(BIN) -duration $(DURATION) -dns-rounds $(DNS_ROUNDS)

bench-lb: build
	@bash .ci/deps bench
	$(GO) run ./bench -lb -binary $(BIN) -duration $(DURATION) -json $(LB_JSON)

# bench-scale: HOSTS namespace hosts, one real daemon each (see bench/scale.go).
bench-scale: build
	@bash .ci/deps bench
	$(GO) run ./bench -scale -binary $(BIN) -scale-hosts $(HOSTS)

# bench-scale-sim: the in-process simulation (cluster/scalesim_test.go) at
# SIM_NODES nodes; one run each. Times are reported in wall clock and in
# simulated seconds (wall / K).
bench-scale-sim:
	$(GO) test -run '^$$' -bench 'ScaleSim/nodes=($(SIM_NODES))$$' -benchtime 1x -timeout 180m -v ./cluster \
		-sim-slow $(SIM_SLOW) -sim-timeout $(SIM_TIMEOUT) -sim-form-timeout $(SIM_FORM_TIMEOUT)

fuzz:
	@set -eo pipefail; \
	targets=$$($(GO) test -list '^Fuzz' $(PKGS) | awk '/^Fuzz/ { f[n++] = $$1; next } /^ok/ { for (i = 0; i < n; i++) print $$2 " " f[i]; n = 0 }'); \
	if [ -z "$$targets" ]; then echo "no fuzz targets"; exit 0; fi; \
	echo "$$targets" | while read -r pkg fn; do \
		echo "== $$pkg $$fn ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) "$$pkg" || exit 1; \
	done

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	# arm64 hosts build without the amd64 assembly (crypto/aesgcm): vet that build too
	GOARCH=arm64 $(GO) vet ./...

demo: build
	@bash .ci/deps demo
	./$(BIN) demo

clean:
	rm -rf bin
