//go:build linux

package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
)

// ResolvConf is the resolver configuration of every container: the
// embedded DNS server at 127.0.0.11, names taken as given (ndots:0).
const ResolvConf = "nameserver 127.0.0.11\noptions ndots:0\n"

// WriteResolvConf writes ResolvConf to path (mode 0644), creating its
// directory. The file is replaced atomically, so a process bind-mounting
// it never sees a partial file.
func WriteResolvConf(path string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("resolv.conf %q: %w", path, err)
	}
	f, err := os.CreateTemp(dir, ".resolv.conf-*")
	if err != nil {
		return fmt.Errorf("resolv.conf %q: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.WriteString(ResolvConf)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("resolv.conf %q: %w", path, err)
	}
	return nil
}

// WriteNetnsResolvConf writes ResolvConf to NetnsEtcDir/name/resolv.conf,
// so that `ip netns exec name ...` sees the same resolver as processes
// started with Command. DeleteNamedNetns removes it.
func WriteNetnsResolvConf(name string) error {
	if err := validNetnsName(name); err != nil {
		return err
	}
	return WriteResolvConf(filepath.Join(NetnsEtcDir, name, "resolv.conf"))
}
