package dockerplugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// Serve listens on the unix socket path (replacing a stale socket file,
// refusing one something answers on) and serves the plugin until ctx is
// done; then it removes the socket, so Docker stops finding the plugin.
func (p *Plugin) Serve(ctx context.Context, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("docker plugin socket %s: %w", path, err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("docker plugin socket %s: another process is listening on it", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("docker plugin socket %s: %w", path, err)
	}
	srv := &http.Server{Handler: p.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	p.log.Info("docker network plugin ready", "socket", path)
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	os.Remove(path)
	p.Close()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
