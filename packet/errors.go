package packet

import "errors"

// ErrQueueFull is returned (possibly wrapped) by a batch Write that dropped
// frames because the receiving queue was full, so callers can count the drop
// as "queue-full" rather than as a device error.
var ErrQueueFull = errors.New("queue full")
