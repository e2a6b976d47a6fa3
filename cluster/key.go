package cluster

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// KeySize is the length in bytes of a cluster key (AES-256).
const KeySize = 32

// GenerateKey returns a new random cluster key of KeySize bytes.
func GenerateKey() ([]byte, error) {
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("generate cluster key: %w", err)
	}
	return k, nil
}

// EncodeKey returns the text form of a key (standard base64), as printed by
// "vxmesh keygen" and stored in key files.
func EncodeKey(key []byte) string {
	return base64.StdEncoding.EncodeToString(key)
}

// DecodeKey parses the text form of a cluster key. Surrounding white space is
// ignored. The key must decode to exactly KeySize bytes.
func DecodeKey(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("cluster key: not base64: %w", err)
	}
	if len(k) != KeySize {
		return nil, fmt.Errorf("cluster key: %d bytes, want %d", len(k), KeySize)
	}
	return k, nil
}

// LoadKeyFile reads a cluster key in text form from path. A file that its
// group or others may read (mode & 0o077 != 0) is refused: whoever reads
// the cluster key can join the cluster and learn every data key.
func LoadKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cluster key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cluster key file: %w", err)
	}
	if m := fi.Mode().Perm(); m&0o077 != 0 {
		return nil, fmt.Errorf("cluster key file %s: mode %04o lets group or others read the key; chmod 600 %s", path, m, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return nil, fmt.Errorf("cluster key file %s: %w", path, err)
	}
	k, err := DecodeKey(string(b))
	if err != nil {
		return nil, fmt.Errorf("cluster key file %s: %w", path, err)
	}
	return k, nil
}

// LoadOrCreateKeyFile reads the cluster key at path, or, when the file does not
// exist, generates a new key and writes it there with mode 0600 (creating the
// parent directory with mode 0700 if needed). created reports which happened.
// The file can then be copied to the other hosts of the cluster.
func LoadOrCreateKeyFile(path string) (key []byte, created bool, err error) {
	k, err := LoadKeyFile(path)
	if err == nil {
		return k, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}
	if k, err = GenerateKey(); err != nil {
		return nil, false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, false, fmt.Errorf("cluster key file: %w", err)
	}
	// O_EXCL: if another process created the file meanwhile, use its key.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		k, err := LoadKeyFile(path)
		return k, false, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("cluster key file: %w", err)
	}
	_, werr := f.WriteString(EncodeKey(k) + "\n")
	cerr := f.Close()
	if werr != nil || cerr != nil {
		os.Remove(path)
		return nil, false, fmt.Errorf("cluster key file %s: write: %w", path, errors.Join(werr, cerr))
	}
	return k, true, nil
}
