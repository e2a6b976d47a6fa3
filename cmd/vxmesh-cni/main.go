// Command vxmesh-cni is the vxmesh CNI plugin: a CNI runtime (cnitool,
// Podman's CNI backend, containerd, ...) runs it to attach a container's
// network namespace to a vxmesh network through the local daemon. See the
// README's "CNI" section and package cniplugin.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/vxmesh/vxmesh/cniplugin"
)

func main() {
	skel.PluginMainFuncs(cniplugin.New().Funcs(), cniplugin.Versions, "CNI plugin vxmesh-cni (attaches namespaces to vxmesh networks)")
}
