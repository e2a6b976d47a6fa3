package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/daemon"
)

func cmdDaemon(env *cliEnv, args []string) error {
	fs := newFlags(env, "daemon", false)
	node := fs.String("node", "", "node name (default: the hostname)")
	stateDir := fs.String("state-dir", "/var/lib/vxmesh", "directory for persisted state")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	prefix := fs.String("netns-prefix", "", "prefix for the named netns of containers made by run")
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 0, "no arguments"); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", *logLevel)
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("must run as root (it creates TAP devices and network namespaces)")
	}
	socket := fs.socket
	if socket == "" {
		socket = os.Getenv(api.SocketEnv)
	}
	if socket == "" {
		socket = api.DefaultSocket
	}
	log := slog.New(slog.NewTextHandler(env.stderr, &slog.HandlerOptions{Level: level}))
	d, err := daemon.New(daemon.Config{
		Node: *node, Socket: socket, StateDir: *stateDir, NetnsPrefix: *prefix, Logger: log,
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err = d.Serve(ctx)
	log.Info("vxmesh daemon stopped")
	return err
}
