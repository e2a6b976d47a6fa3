//go:build linux

package fwprobe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// LegacyTablesFile lists the legacy iptables tables of the reading
// thread's network namespace (/proc/net is the process's, that is its
// main thread's); it does not exist while the ip_tables module is not
// loaded.
const LegacyTablesFile = "/proc/thread-self/net/ip_tables_names"

// Check decides for the calling thread's network namespace (Decide): the
// daemon's, which is the host's. A dump interrupted by a concurrent change
// is asked again, up to three times.
func Check() Verdict {
	return check(Decide)
}

// CheckLocal decides by DecideLocal for the calling thread's network
// namespace, like Check.
func CheckLocal() Verdict {
	return check(DecideLocal)
}

// check reads the nftables chains (a dump interrupted by a concurrent
// change is asked again, up to three times) and the legacy tables and
// applies decide.
func check(decide func([]Chain, error, []string, error) Verdict) Verdict {
	chains, err := ListChains()
	for try := 0; try < 2 && errors.Is(err, ErrDumpInterrupted); try++ {
		chains, err = ListChains()
	}
	legacy, lerr := LegacyTables()
	return decide(chains, err, legacy, lerr)
}

// LegacyTables returns the legacy iptables tables loaded in this network
// namespace (none if the ip_tables module is not loaded).
func LegacyTables() ([]string, error) {
	b, err := os.ReadFile(LegacyTablesFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return ParseLegacyTables(b), nil
}

// ListChains dumps every nftables chain of this network namespace, of
// every family, over netlink (NFT_MSG_GETCHAIN with NLM_F_DUMP). It needs
// CAP_NET_ADMIN.
func ListChains() ([]Chain, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("netfilter netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("netfilter netlink bind: %w", err)
	}
	// A dump that does not end (a kernel bug) must not hang the caller.
	tv := unix.Timeval{Sec: 2}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, err
	}
	const seq = 1
	var req [nlmsgHdrLen + nfgenLen]byte
	binary.NativeEndian.PutUint32(req[0:4], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:6], subsysNFTables<<8|msgGetChain)
	binary.NativeEndian.PutUint16(req[6:8], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:12], seq)
	req[16] = unix.AF_UNSPEC // every family
	req[17] = unix.NFNETLINK_V0
	if err := unix.Sendto(fd, req[:], 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("nftables chain dump: %w", err)
	}
	var chains []Chain
	buf := make([]byte, 64<<10)
	for {
		n, _, flags, _, err := unix.Recvmsg(fd, buf, nil, 0)
		if err != nil {
			return nil, fmt.Errorf("nftables chain dump: %w", err)
		}
		if flags&unix.MSG_TRUNC != 0 {
			return nil, errors.New("nftables chain dump: message truncated")
		}
		var done bool
		if chains, done, err = ParseChains(chains, buf[:n], seq); err != nil {
			return nil, fmt.Errorf("nftables chain dump: %w", err)
		}
		if done {
			return chains, nil
		}
	}
}

// Watch subscribes to the nftables change notifications of the calling
// thread's network namespace (the NFNLGRP_NFTABLES netlink group: every
// table, chain, rule or set added or removed, and every generation) and
// sends on the returned channel after each batch of them, coalesced: a
// receiver that checks again (Check) after every receive has seen the
// last change. A lost notification (the socket's queue overran) is
// reported the same way. Legacy iptables sends none, so a periodic Check
// is still needed for it. The watch ends, and the channel is closed, when
// ctx is done or the socket fails.
func Watch(ctx context.Context) (<-chan struct{}, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("netfilter netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netfilter netlink bind: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, unix.NFNLGRP_NFTABLES); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("nftables notifications: %w", err)
	}
	f := os.NewFile(uintptr(fd), "nftables-notifications")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	changed := make(chan struct{}, 1)
	stop := context.AfterFunc(ctx, func() { f.Close() })
	go func() {
		defer close(changed)
		defer stop()
		defer f.Close()
		buf := make([]byte, 64<<10)
		for {
			var got bool
			var rerr error
			err := rc.Read(func(fd uintptr) bool {
				for {
					_, _, err := unix.Recvfrom(int(fd), buf, 0)
					switch {
					case err == nil, errors.Is(err, unix.ENOBUFS):
						got = true // a notification, or some were lost
					case errors.Is(err, unix.EINTR):
					case errors.Is(err, unix.EAGAIN):
						return got
					default:
						rerr = err
						return true
					}
				}
			})
			if err != nil || rerr != nil {
				return
			}
			select {
			case changed <- struct{}{}:
			default: // one pending already covers this batch
			}
		}
	}()
	return changed, nil
}
