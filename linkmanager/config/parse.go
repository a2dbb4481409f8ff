package config

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Duration is a time.Duration written as "10s", "5m" or "1h". A bare number
// is rejected: yaml would read 300 as 300ns, which is never what was meant.
type Duration time.Duration

// UnmarshalYAML accepts only strings with a unit.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return parseErr("want a duration such as 10s, got "+describe(n), "write one value with a unit, e.g. 10s")
	}
	if tag := n.ShortTag(); tag == "!!int" || tag == "!!float" {
		return parseErr(fmt.Sprintf("%s has no unit", n.Value), fmt.Sprintf("write %ss (or ms, m, h)", n.Value))
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return parseErr(fmt.Sprintf("%q is not a duration", n.Value), "write a number with a unit ms, s, m or h, e.g. 10s or 1h30m")
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the same form UnmarshalYAML reads, so a Config
// round-trips.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

func (d Duration) String() string { return time.Duration(d).String() }

// Parse decodes a config file. Unknown keys, wrong types and durations
// without units are all reported at once, with line numbers. The result has
// no defaults applied.
func Parse(data []byte) (*Config, error) {
	c, errs := parse(data)
	if len(errs) > 0 {
		return nil, joinErrs(errs)
	}
	return c, nil
}

func parse(data []byte) (*Config, []*FieldError) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, yamlErrors(err)
	}
	if len(doc.Content) == 0 || doc.Content[0].ShortTag() == "!!null" {
		return nil, []*FieldError{parseErr("the file is empty", "start from configs/linkmanager.yaml")}
	}
	// yaml's own strict mode stops at the first bad key and names Go types,
	// so walk the tree first to report every problem with its YAML path.
	w := walker{lines: map[string]int{}}
	w.walk(doc.Content[0], reflect.TypeFor[Config](), "")
	if len(w.errs) > 0 {
		return nil, w.errs
	}
	// The walk and the decoder should agree; strict decoding stays as the
	// backstop for what the walk skips (merge keys).
	c := &Config{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil {
		return nil, yamlErrors(err)
	}
	c.lines = w.lines
	return c, nil
}

func parseErr(problem, fix string) *FieldError {
	return &FieldError{Problem: problem, Fix: fix, Err: ErrParse}
}

var (
	yamlLine     = regexp.MustCompile(`^line (\d+): (.*)$`)
	yamlNotFound = regexp.MustCompile(`^field (\S+) not found in type`)
)

// yamlErrors turns yaml's messages ("yaml: line 7: ...") into FieldErrors.
func yamlErrors(err error) []*FieldError {
	var fe *FieldError
	if errors.As(err, &fe) {
		return []*FieldError{fe}
	}
	msgs := []string{strings.TrimPrefix(err.Error(), "yaml: ")}
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	var out []*FieldError
	for _, msg := range msgs {
		e := parseErr(msg, "check the indentation and quoting on this line and the one before")
		if m := yamlLine.FindStringSubmatch(msg); m != nil {
			e.Line, _ = strconv.Atoi(m[1])
			e.Problem = m[2]
		}
		switch {
		case strings.Contains(msg, "cannot start any token"):
			e.Fix = "indent with spaces, not tabs, and quote values starting with @ or `"
		case strings.Contains(msg, "already defined"):
			e.Fix = "keep only one of them"
		case strings.Contains(msg, "cannot unmarshal"):
			e.Fix = "compare with configs/linkmanager.yaml"
		}
		// Only keys pulled in by a << merge get here; say it like the walk does.
		if m := yamlNotFound.FindStringSubmatch(e.Problem); m != nil {
			e.Problem = fmt.Sprintf("unknown key %q", m[1])
			e.Fix = "remove it from the merged section; compare with configs/linkmanager.yaml"
		}
		out = append(out, e)
	}
	return out
}

// walker checks a YAML tree against the Config struct's yaml tags and
// records the line of every field so Validate can point at it.
type walker struct {
	errs  []*FieldError
	lines map[string]int
}

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

func (w *walker) add(line int, field, problem, fix string) {
	w.errs = append(w.errs, &FieldError{Line: line, Field: field, Problem: problem, Fix: fix, Err: ErrParse})
}

func (w *walker) walk(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.ShortTag() == "!!null" {
		return // "key:" with nothing after it: same as leaving the key out
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case reflect.PointerTo(t).Implements(unmarshalerType):
		w.leaf(n, t, path)
	case t.Kind() == reflect.Struct:
		w.mapping(n, t, path)
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			fix := "write it as a list, e.g. [a, b]"
			if n.Kind == yaml.ScalarNode {
				fix = fmt.Sprintf("write it as a list: [%q]", n.Value)
			}
			w.add(n.Line, path, "want a list, got "+describe(n), fix)
			return
		}
		for i, item := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			w.lines[p] = item.Line
			w.walk(item, t.Elem(), p)
		}
	default:
		w.leaf(n, t, path)
	}
}

func (w *walker) mapping(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind != yaml.MappingNode {
		w.add(n.Line, path, "want indented key: value lines, got "+describe(n), "compare with configs/linkmanager.yaml")
		return
	}
	fields := map[string]reflect.Type{}
	var names []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if f.IsExported() && name != "" && name != "-" {
			fields[name] = f.Type
			names = append(names, name)
		}
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Value == "<<" {
			continue // merge key; the strict decoder checks what it pulls in
		}
		p := joinPath(path, k.Value)
		if first, dup := seen[k.Value]; dup {
			w.add(k.Line, p, fmt.Sprintf("duplicate key, first set on line %d", first), "keep only one of them")
			continue
		}
		seen[k.Value] = k.Line
		ft, ok := fields[k.Value]
		if !ok {
			w.add(k.Line, path, fmt.Sprintf("unknown key %q", k.Value), suggest(k.Value, names))
			continue
		}
		w.lines[p] = k.Line
		w.walk(v, ft, p)
	}
}

// leaf decodes one scalar on its own so a type error carries our path.
func (w *walker) leaf(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind != yaml.ScalarNode {
		w.add(n.Line, path, "want a single value, got "+describe(n), "write one value after the key")
		return
	}
	err := n.Decode(reflect.New(t).Interface())
	if err == nil {
		return
	}
	var fe *FieldError
	if errors.As(err, &fe) {
		w.add(n.Line, path, fe.Problem, fe.Fix)
		return
	}
	switch t.Kind() {
	case reflect.Int:
		fix := "write digits only, e.g. 55000"
		if _, aerr := strconv.Atoi(n.Value); aerr == nil {
			fix = "remove the quotes"
		}
		w.add(n.Line, path, fmt.Sprintf("%q is not a whole number", n.Value), fix)
	case reflect.Bool:
		w.add(n.Line, path, fmt.Sprintf("%q is not true or false", n.Value), "write true or false")
	default:
		w.add(n.Line, path, strings.TrimPrefix(err.Error(), "yaml: "), "compare with configs/linkmanager.yaml")
	}
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a section of keys"
	case yaml.SequenceNode:
		return "a list"
	}
	return strconv.Quote(n.Value)
}

func joinPath(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

// suggest names the closest known key: most unknown keys are typos
// (registar) or the wrong separator (port-min).
func suggest(key string, known []string) string {
	norm := strings.ReplaceAll(strings.ToLower(key), "-", "_")
	best, bestDist := "", 3
	for _, k := range known {
		if d := editDistance(norm, k); d < bestDist && d < len(key) {
			best, bestDist = k, d
		}
	}
	if best != "" {
		return fmt.Sprintf("did you mean %q?", best)
	}
	return "remove it; known keys here: " + strings.Join(known, ", ")
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
