package main

import (
	"context"
	"io"
	"slices"
)

// built is a topology set up and ready to be measured: its two container
// namespaces, what tears it down, and what to add to a measurement's
// error (the daemons' logs).
type built struct {
	pair
	closers []func()
	explain func(error) error
}

// setupFunc builds one topology of the table.
type setupFunc func(ctx context.Context, cfg config, prefix string, log io.Writer) (*built, error)

// onClose adds f to what close runs (in reverse order of adding).
func (b *built) onClose(f func()) { b.closers = append(b.closers, f) }

// close tears the topology down.
func (b *built) close() {
	for _, f := range slices.Backward(b.closers) {
		f()
	}
	b.closers = nil
}

// closeOnError closes b if *err is set: deferred by a setupFunc so that a
// failed setup leaves nothing behind.
func (b *built) closeOnError(err *error) {
	if *err != nil {
		b.close()
	}
}

// fail returns err with what explain adds to it.
func (b *built) fail(err error) error {
	if err == nil || b.explain == nil {
		return err
	}
	return b.explain(err)
}

// measureSetup builds a topology with setup, measures it (measure) and
// tears it down.
func measureSetup(ctx context.Context, cfg config, prefix string, log io.Writer, setup setupFunc) (measurement, error) {
	b, err := setup(ctx, cfg, prefix, log)
	if err != nil {
		return measurement{}, err
	}
	defer b.close()
	m, err := measure(ctx, cfg, b.pair, log)
	return m, b.fail(err)
}
