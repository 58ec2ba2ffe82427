package sqlsource

import (
	"regexp"
	"strings"
)

// maxLine is the length past which a header's argument or column list is
// written one item per line.
const maxLine = 100

// Statement is o's definition as a statement to run or to read, ending in a
// semicolon: the database's own text (Def) with its schema qualification
// dropped from the object's name and its header laid out over several
// lines. Only whitespace outside the body changes, so the database reads
// it back as the same Def.
func Statement(o Object) string {
	var s string
	switch o.Kind {
	case Function:
		s = functionStatement(o.Def)
	case Trigger:
		s = triggerStatement(o.Def)
	default:
		s = strings.TrimRight(o.Def, "; \n")
	}
	return strings.TrimRight(s, "\n") + ";"
}

var (
	functionHead = regexp.MustCompile(`^CREATE OR REPLACE (FUNCTION|PROCEDURE) public\.`)
	triggerHead  = regexp.MustCompile(`^CREATE TRIGGER `)
	triggerOn    = regexp.MustCompile(` ON public\.`)
)

// functionStatement lays out pg_get_functiondef's text: its first line is
// "CREATE OR REPLACE FUNCTION public.name(arguments)", then one line per
// attribute (" RETURNS ...", " LANGUAGE ...", ...) and "AS $function$",
// which starts the body, kept as it is.
func functionStatement(def string) string {
	head, body, ok := strings.Cut(def, "\nAS ")
	if !ok {
		return def
	}
	lines := strings.Split(head, "\n")
	var b strings.Builder
	b.WriteString(splitList(functionHead.ReplaceAllString(lines[0], "CREATE OR REPLACE $1 "), ""))
	for _, l := range lines[1:] {
		b.WriteString("\n")
		b.WriteString(splitList("    "+strings.TrimSpace(l), "    "))
	}
	b.WriteString("\nAS ")
	b.WriteString(body)
	return b.String()
}

// splitList writes the parenthesized list that ends line one item per
// line when the line is longer than maxLine; indent is the line's own.
func splitList(line, indent string) string {
	if len(line) <= maxLine || !strings.HasSuffix(line, ")") {
		return line
	}
	open := strings.IndexByte(line, '(')
	if open < 0 {
		return line
	}
	items := splitTop(line[open+1 : len(line)-1])
	if items == nil {
		return line
	}
	var b strings.Builder
	b.WriteString(line[:open+1])
	for i, it := range items {
		b.WriteString("\n" + indent + "    " + strings.TrimSpace(it))
		if i < len(items)-1 {
			b.WriteString(",")
		}
	}
	b.WriteString("\n" + indent + ")")
	return b.String()
}

// splitTop splits s at its commas outside parentheses, quotes and double
// quotes; nil when s does not close every parenthesis it opens.
func splitTop(s string) []string {
	var out []string
	depth, start := 0, 0
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"':
			quote = c
		case c == '(':
			depth++
		case c == ')':
			depth--
			if depth < 0 {
				return nil
			}
		case c == ',' && depth == 0:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	if depth != 0 || quote != 0 {
		return nil
	}
	return append(out, s[start:])
}

// triggerStatement turns pg_get_triggerdef's one line into a CREATE OR
// REPLACE TRIGGER over three lines: the events and the table, FOR EACH ...
// (and WHEN), EXECUTE FUNCTION. A constraint trigger stays CREATE
// CONSTRAINT TRIGGER (it cannot be replaced; a migration drops it first).
func triggerStatement(def string) string {
	s := triggerHead.ReplaceAllString(def, "CREATE OR REPLACE TRIGGER ")
	if loc := triggerOn.FindStringIndex(s); loc != nil {
		s = s[:loc[0]] + " ON " + s[loc[1]:]
	}
	if i := strings.Index(s, " FOR EACH "); i > 0 {
		s = s[:i] + "\n    " + s[i+1:]
	}
	if i := strings.LastIndex(s, " EXECUTE FUNCTION "); i > 0 {
		s = s[:i] + "\n    " + s[i+1:]
	}
	return s
}
