package tiers

import (
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// WriteTable writes the report as a table: one line per tier with its
// baseline indented under it, latencies in µs, throughput in MB/s, and
// the tier's p50 ratio to its baseline.
func WriteTable(w io.Writer, rep *Report) error {
	fmt.Fprintf(w, "machine: %s\n", rep.Machine)
	if rep.NeighborNode != "" {
		fmt.Fprintf(w, "neighbor rows: the running node at %s (read from this machine over the network)\n", rep.NeighborNode)
	}
	fmt.Fprintf(w, "latency: one request at a time (µs); MB/s: %d workers; %s per phase\n\n", rep.Parallel, fmtSeconds(rep.Duration))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIER\tSIZE\tP50\tP99\tP999\tMB/s\tSAMPLES\tBASELINE\tRATIO p50\tRATIO MB/s\t")
	for _, row := range rep.Rows {
		name := row.Tier
		if row.Kind == KindBaseline {
			name = "  ~ " + name
		}
		if row.Skipped != "" {
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\t-\t%s\t\t\t  skipped: %s\n", name, sizeName(row.Size), row.Baseline, row.Skipped)
			continue
		}
		mbps := "-"
		if row.MBps > 0 {
			mbps = fmt.Sprintf("%.0f", row.MBps)
		}
		ratio, tratio := "", ""
		if row.Ratio > 0 {
			ratio = fmt.Sprintf("%.2fx", row.Ratio)
		}
		if row.MBpsRatio > 0 {
			tratio = fmt.Sprintf("%.2fx", row.MBpsRatio)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t\n", name, sizeName(row.Size),
			fmtUS(row.P50US), fmtUS(row.P99US), fmtUS(row.P999US), mbps, row.Samples, row.Baseline, ratio, tratio)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	_, err := fmt.Fprintf(w, "\nratio p50 = tier p50 / baseline p50 (1.00x: as fast as the raw mechanism; higher: the tier's overhead)\n")
	return err
}

func fmtUS(v float64) string {
	switch {
	case v >= 10000:
		return fmt.Sprintf("%.1fms", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0fµs", v)
	case v >= 10:
		return fmt.Sprintf("%.1fµs", v)
	}
	return fmt.Sprintf("%.2fµs", v)
}

func fmtSeconds(s float64) string { return fmt.Sprintf("%gs", s) }

// WriteJSON writes the report as indented JSON to path.
func WriteJSON(path string, rep *Report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// WritePlot draws the report to path (.svg or .png): one panel per page
// size, every tier next to its baseline on a log-scale latency axis. Each
// row is drawn as a box from p50 to p99 with a bar at p50 and whiskers at
// p1 and p999 (minimum and maximum are left out: one preemption on a
// shared VM says nothing about the tier).
func WritePlot(path string, rep *Report) error {
	sizes := []int{}
	for _, row := range rep.Rows {
		if !containsInt(sizes, row.Size) {
			sizes = append(sizes, row.Size)
		}
	}
	if len(sizes) == 0 {
		return fmt.Errorf("plot %s: no rows", path)
	}
	plots := make([][]*plot.Plot, len(sizes))
	for i, size := range sizes {
		var rows []Row
		for _, row := range rep.Rows {
			if row.Size == size && row.Skipped == "" && row.P50US > 0 {
				rows = append(rows, row)
			}
		}
		p := plot.New()
		p.Title.Text = fmt.Sprintf("%s pages: latency of one request (tiers blue, baselines grey; box p50-p99, black bar p50, whiskers p1 and p999)", sizeName(size))
		p.Y.Label.Text = "latency (µs, log scale)"
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
		p.Add(plotter.NewGrid())
		if len(rows) > 0 {
			names := make([]string, len(rows))
			for j, r := range rows {
				names[j] = r.Tier
			}
			p.NominalX(names...)
			p.X.Tick.Label.Font.Size = font.Length(8)
			p.Add(&percentileBoxes{rows: rows})
			p.X.Min, p.X.Max = -0.6, float64(len(rows))-0.4
		}
		plots[i] = []*plot.Plot{p}
	}
	w, h := 14*vg.Inch, vg.Length(len(sizes))*4*vg.Inch
	var c interface {
		vg.CanvasSizer
		io.WriterTo
	}
	switch strings.ToLower(filepath.Ext(path)) {
	case ".svg":
		c = vgsvg.New(w, h)
	case ".png":
		c = vgimg.PngCanvas{Canvas: vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(96))}
	default:
		return fmt.Errorf("plot %s: want a .svg or .png file", path)
	}
	dc := draw.New(c)
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())
	tiles := draw.Tiles{Rows: len(sizes), Cols: 1, PadTop: vg.Points(6), PadBottom: vg.Points(6), PadLeft: vg.Points(6), PadRight: vg.Points(10), PadY: vg.Points(12)}
	canvases := plot.Align(plots, tiles, dc)
	for i := range plots {
		plots[i][0].Draw(canvases[i][0])
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	if _, err := c.WriteTo(f); err != nil {
		_ = f.Close()
		return fmt.Errorf("plot %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return nil
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// percentileBoxes draws one box per row at x = row index.
type percentileBoxes struct{ rows []Row }

// Plot implements plot.Plotter.
func (b *percentileBoxes) Plot(c draw.Canvas, plt *plot.Plot) {
	trX, trY := plt.Transforms(&c)
	half := vg.Points(9)
	tierColor := color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	baseColor := color.RGBA{R: 0x70, G: 0x70, B: 0x70, A: 0xff}
	tierFill := color.RGBA{R: 0xae, G: 0xc7, B: 0xe8, A: 0xff}
	baseFill := color.RGBA{R: 0xdd, G: 0xdd, B: 0xdd, A: 0xff}
	for i, r := range b.rows {
		clr := tierColor
		if r.Kind == KindBaseline {
			clr = baseColor
		}
		x := trX(float64(i))
		thin := draw.LineStyle{Color: clr, Width: vg.Points(1)}
		thick := draw.LineStyle{Color: color.Black, Width: vg.Points(2)}
		lo, p50, p99, p999 := r.P1US, r.P50US, r.P99US, r.P999US
		if lo <= 0 {
			lo = p50
		}
		c.StrokeLine2(thin, x, trY(lo), x, trY(p999))
		c.StrokeLine2(thin, x-half/2, trY(lo), x+half/2, trY(lo))
		c.StrokeLine2(thin, x-half/2, trY(p999), x+half/2, trY(p999))
		box := []vg.Point{{X: x - half, Y: trY(p50)}, {X: x + half, Y: trY(p50)}, {X: x + half, Y: trY(p99)}, {X: x - half, Y: trY(p99)}}
		fill := tierFill
		if r.Kind == KindBaseline {
			fill = baseFill
		}
		c.FillPolygon(fill, box)
		c.StrokeLines(thin, append(box, box[0]))
		c.StrokeLine2(thick, x-half, trY(p50), x+half, trY(p50))
	}
}

// DataRange implements plot.DataRanger.
func (b *percentileBoxes) DataRange() (xmin, xmax, ymin, ymax float64) {
	ymin, ymax = 1e18, 0
	for _, r := range b.rows {
		lo := r.P1US
		if lo <= 0 {
			lo = r.P50US
		}
		ymin = min(ymin, lo)
		ymax = max(ymax, r.P999US, r.P99US)
	}
	return -0.5, float64(len(b.rows)) - 0.5, ymin * 0.8, ymax * 1.25
}
