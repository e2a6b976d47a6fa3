package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"strings"
	"text/tabwriter"
	"text/template"
	"text/template/parse"
)

// printJSON writes v as indented JSON, with every nil slice written as an
// empty array, never as null.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(withArrays(v))
}

// withArrays returns a copy of v in which every nil slice reachable
// through structs, slices and pointers is an empty one, so that JSON
// output always has its arrays.
func withArrays(v any) any {
	if v == nil {
		return v
	}
	rv := reflect.New(reflect.TypeOf(v)).Elem()
	rv.Set(reflect.ValueOf(v))
	fillSlices(rv)
	return rv.Interface()
}

func fillSlices(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			// Copy the pointee: the caller's value stays untouched.
			p := reflect.New(v.Elem().Type())
			p.Elem().Set(v.Elem())
			fillSlices(p.Elem())
			v.Set(p)
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				fillSlices(v.Field(i))
			}
		}
	case reflect.Slice:
		if v.IsNil() {
			v.Set(reflect.MakeSlice(v.Type(), 0, 0))
			return
		}
		c := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		reflect.Copy(c, v)
		for i := 0; i < c.Len(); i++ {
			fillSlices(c.Index(i))
		}
		v.Set(c)
	}
}

// outputTemplate is a --format Go template, as Docker's: applied to every
// element of a list (or once to a single object); with the "table "
// prefix, its columns are aligned under headings named after the fields.
type outputTemplate struct {
	text  string
	table bool
	tmpl  *template.Template
}

// templateFuncs are the functions --format templates may call besides
// text/template's own.
func templateFuncs() template.FuncMap {
	return template.FuncMap{
		"json": func(v any) (string, error) {
			b, err := json.Marshal(withArrays(v))
			return string(b), err
		},
		"join":  strings.Join,
		"split": strings.Split,
		"upper": strings.ToUpper,
		"lower": strings.ToLower,
	}
}

// parseFormat checks --format: table, json or a template.
func (fs *flagSet) parseFormat() error {
	switch fs.format {
	case "", "table", "json":
		return nil
	}
	t, err := parseTemplate(fs.format)
	if err != nil {
		return err
	}
	fs.tmpl = t
	return nil
}

func parseTemplate(format string) (*outputTemplate, error) {
	ot := &outputTemplate{text: format}
	if rest, ok := strings.CutPrefix(format, "table "); ok {
		ot.table, ot.text = true, rest
	}
	// As Docker: the two-character escapes \t and \n typed in a shell
	// stand for a tab and a newline.
	ot.text = strings.NewReplacer(`\t`, "\t", `\n`, "\n").Replace(ot.text)
	if !strings.Contains(ot.text, "{{") {
		return nil, usagef("--format %q: want table, json or a Go template such as '{{.Name}}'", format)
	}
	t, err := template.New("format").Funcs(templateFuncs()).Option("missingkey=error").Parse(ot.text)
	if err != nil {
		return nil, usagef("--format %q: want table, json or a Go template: %v", format, strings.TrimPrefix(err.Error(), "template: format:"))
	}
	ot.tmpl = t
	return ot, nil
}

// output prints v (a slice or one object) in the chosen format: the
// table printTable writes, JSON, or the template.
func (fs *flagSet) output(w io.Writer, v any, printTable func() error) error {
	switch {
	case fs.tmpl != nil:
		return fs.tmpl.print(w, v)
	case fs.format == "json":
		return printJSON(w, v)
	}
	return printTable()
}

func (ot *outputTemplate) print(w io.Writer, v any) error {
	rv := reflect.ValueOf(v)
	var items []any
	if rv.Kind() == reflect.Slice {
		for i := 0; i < rv.Len(); i++ {
			items = append(items, rv.Index(i).Interface())
		}
	} else {
		items = []any{v}
	}
	// Buffered: one write per few KiB, not one per item or table cell.
	bw := bufio.NewWriterSize(w, outputBuffer)
	defer bw.Flush()
	var out io.Writer = bw
	var tw *tabwriter.Writer
	if ot.table {
		tw = tabwriter.NewWriter(bw, 0, 4, 2, ' ', 0)
		out = tw
		elem := rv.Type()
		if elem.Kind() == reflect.Slice {
			elem = elem.Elem()
		}
		fmt.Fprintln(tw, ot.heading(elem))
	}
	var buf bytes.Buffer
	for _, it := range items {
		buf.Reset()
		if err := ot.tmpl.Execute(&buf, withArrays(it)); err != nil {
			return usagef("--format: %v", strings.TrimPrefix(err.Error(), "template: format:"))
		}
		fmt.Fprintln(out, buf.String())
	}
	if tw != nil {
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// heading is the template's header line: its text with every action
// replaced by the upper-cased JSON name of the last field it names (the
// table headings of the built-in tables are the same names).
func (ot *outputTemplate) heading(elem reflect.Type) string {
	var b strings.Builder
	for _, n := range ot.tmpl.Tree.Root.Nodes {
		switch n := n.(type) {
		case *parse.TextNode:
			b.Write(n.Text)
		case *parse.ActionNode:
			b.WriteString(headingOf(lastField(n.Pipe), elem))
		}
	}
	return b.String()
}

// lastField returns the last field name a pipeline refers to ("IP" in
// {{.IP}}, "Endpoints" in {{json .Endpoints}}), or "".
func lastField(p *parse.PipeNode) string {
	name := ""
	for _, c := range p.Cmds {
		for _, a := range c.Args {
			switch a := a.(type) {
			case *parse.FieldNode:
				name = a.Ident[len(a.Ident)-1]
			case *parse.PipeNode:
				if f := lastField(a); f != "" {
					name = f
				}
			}
		}
	}
	return name
}

// headingOf names the column of field: its JSON key in upper case with
// spaces for underscores ("rx_packets" -> "RX PACKETS").
func headingOf(field string, elem reflect.Type) string {
	if field == "" {
		return ""
	}
	for elem.Kind() == reflect.Pointer {
		elem = elem.Elem()
	}
	if elem.Kind() == reflect.Struct {
		if f, ok := elem.FieldByName(field); ok {
			if key, _, _ := strings.Cut(f.Tag.Get("json"), ","); key != "" && key != "-" {
				field = key
			}
		}
	}
	return strings.ToUpper(strings.ReplaceAll(field, "_", " "))
}

// table writes aligned columns.
// table writes aligned columns. The tab writer writes each cell and its
// padding separately, so its output is buffered: a thousand rows are a
// few writes, not thousands of system calls.
type table struct {
	tw  *tabwriter.Writer
	out *bufio.Writer
}

// outputBuffer is the size of the buffer between tables or templates and
// stdout.
const outputBuffer = 64 << 10

// newTable starts a table. Its headings must name the JSON keys of the
// rows' objects (upper case, spaces for underscores), so that the table,
// --format json and --format templates agree.
func newTable(w io.Writer, headers ...string) *table {
	out := bufio.NewWriterSize(w, outputBuffer)
	t := &table{tw: tabwriter.NewWriter(out, 0, 4, 2, ' ', 0), out: out}
	t.row(toAny(headers)...)
	return t
}

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

func (t *table) row(cols ...any) {
	parts := make([]string, len(cols))
	for i, c := range cols {
		parts[i] = fmt.Sprint(c)
	}
	fmt.Fprintln(t.tw, strings.Join(parts, "\t"))
}

func (t *table) flush() error {
	if err := t.tw.Flush(); err != nil {
		return err
	}
	return t.out.Flush()
}
