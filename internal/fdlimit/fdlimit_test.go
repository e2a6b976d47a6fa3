package fdlimit

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The raise is tested in a child process (this test binary run again with
// fdlimitChild set), so the test process's own limits stay as they were.
const childEnv = "FDLIMIT_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(child())
	}
	os.Exit(m.Run())
}

// child lowers its soft limit, raises it with Raise and prints
// "before.soft before.hard after.soft after.hard".
func child() int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		os.Stderr.WriteString(err.Error())
		return 1
	}
	rl.Cur = min(rl.Max, 64)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		os.Stderr.WriteString(err.Error())
		return 1
	}
	before, after, err := Raise()
	if err != nil {
		os.Stderr.WriteString(err.Error())
		return 1
	}
	os.Stdout.WriteString(strings.Join([]string{
		strconv.FormatUint(before.Soft, 10), strconv.FormatUint(before.Hard, 10),
		strconv.FormatUint(after.Soft, 10), strconv.FormatUint(after.Hard, 10)}, " "))
	return 0
}

func TestRaiseLiftsSoftLimitToHard(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	f := strings.Fields(string(out))
	if len(f) != 4 {
		t.Fatalf("child printed %q", out)
	}
	parent, err := Get()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{strconv.FormatUint(min(parent.Hard, 64), 10), strconv.FormatUint(parent.Hard, 10),
		strconv.FormatUint(parent.Hard, 10), strconv.FormatUint(parent.Hard, 10)}
	if strings.Join(f, " ") != strings.Join(want, " ") {
		t.Fatalf("before/after soft,hard = %v, want %v", f, want)
	}
}

func TestOpenCountsDescriptors(t *testing.T) {
	n0, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n1, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	if n0 <= 0 || n1 != n0+1 {
		t.Fatalf("open descriptors %d, then %d after opening one more; want >0 and one more", n0, n1)
	}
}
