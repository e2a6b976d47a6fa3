// Package dockerplugin serves Docker's network plugin protocol for the
// vxmesh daemon: libnetwork's remote network driver and its IPAM driver,
// JSON over HTTP on a unix socket in Docker's plugin directory
// (DefaultSocket; the driver's name is the socket's base name).
//
// A Docker network of this driver is the vxmesh cluster network of the
// same name: the first use creates it with the Docker network's subnet
// and gateway, or adopts the existing one when its subnet matches, and a
// mismatch is refused. The IPAM driver hands out addresses from the
// daemon's own allocator (address blocks claimed in the cluster), so they
// never collide with other hosts' containers. Each Docker endpoint is a
// vxmesh container named "docker-" and the endpoint ID's first 12
// characters, whose interface is a TAP device the daemon makes in its own
// namespace at Join; Docker moves it into the container's namespace,
// names it ethN and gives it the address and MAC this driver returned.
// The device is persistent: it stays in the container across daemon
// restarts, and the restarted daemon finds it there again by its MAC.
// Leave detaches it (the device goes with it). Published ports (`docker
// run -p`, ProgramExternalConnectivity) are published on this host as
// `vxmesh run -p` does.
//
// The plugin keeps one record of its own per endpoint (network and
// address, Config.StateFile), so that Join, Leave and DeleteEndpoint work
// across daemon restarts; Docker network IDs are resolved to names
// through the Docker Engine API (Engine) and cached, and endpoint names
// follow from endpoint IDs.
package dockerplugin
