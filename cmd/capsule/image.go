package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/capsulehq/capsule/internal/image"
)

const imageUsage = `usage: capsule image <command> [flags]

commands:
  build [--template base|minimal] [--size-mb N] [--envd PATH] [--kernel-deb PATH] [--data-dir DIR]
  list  [--json] [--data-dir DIR]
  rm    NAME|ID [--data-dir DIR]
`

// runImage is `capsule image …`: build, list and remove template images.
func runImage(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, imageUsage)
		return flag.ErrHelp
	}
	fs := flag.NewFlagSet("image "+args[0], flag.ContinueOnError)
	dataDir := fs.String("data-dir", image.DefaultDataDir, "Capsule data directory (the store is its images/)")
	verbose := fs.Bool("v", false, "log every step")
	switch args[0] {
	case "build":
		o := image.BuildOptions{}
		fs.StringVar(&o.Template, "template", "base", "template: "+strings.Join(image.Templates(), ", "))
		fs.IntVar(&o.DiskSizeMB, "size-mb", 0, "root filesystem size in MiB (default: the template's)")
		fs.StringVar(&o.EnvdBin, "envd", siblingBinary("envd"), "envd binary (static)")
		fs.StringVar(&o.KernelDeb, "kernel-deb", "", "kernel .deb or bzImage (default: apt package "+image.DefaultKernelPackage+")")
		fs.StringVar(&o.Mirror, "mirror", "", "Debian mirror for the base template (default: the host's apt source)")
		asJSON := fs.Bool("json", false, "print the image as JSON")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		s, err := openImageStore(*dataDir, *verbose)
		if err != nil {
			return err
		}
		img, err := s.Build(ctx, o)
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(img)
		}
		return printImages([]*image.Image{img})
	case "list", "ls":
		asJSON := fs.Bool("json", false, "print JSON")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		s, err := openImageStore(*dataDir, *verbose)
		if err != nil {
			return err
		}
		imgs, err := s.List(ctx)
		if err != nil {
			return err
		}
		if *asJSON {
			if imgs == nil {
				imgs = []*image.Image{}
			}
			return printJSON(imgs)
		}
		return printImages(imgs)
	case "rm", "remove":
		ref, rest := "", args[1:]
		if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
			ref, rest = rest[0], rest[1:]
		}
		if err := fs.Parse(rest); err != nil {
			return err
		}
		if ref == "" && fs.NArg() == 1 {
			ref = fs.Arg(0)
		}
		if ref == "" {
			return errors.New("image rm: name a template or an image ID")
		}
		s, err := openImageStore(*dataDir, *verbose)
		if err != nil {
			return err
		}
		removed, err := s.Remove(ctx, ref)
		for _, img := range removed {
			fmt.Printf("removed %s (%s)\n", img.ID, img.Template)
		}
		return err
	case "help", "-h", "--help":
		fmt.Print(imageUsage)
		return nil
	}
	fmt.Fprint(os.Stderr, imageUsage)
	return fmt.Errorf("image: unknown command %q", args[0])
}

func openImageStore(dataDir string, verbose bool) (*image.Store, error) {
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	return image.Open(dataDir, log)
}

// printImages prints images as an aligned table.
func printImages(imgs []*image.Image) error {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TEMPLATE\tID\tSIZE\tKERNEL\tCREATED\tROOTFS")
	for _, img := range imgs {
		fmt.Fprintf(tw, "%s\t%s\t%d MiB\t%s\t%s\t%s\n", img.Template, img.ID[:12], img.SizeBytes>>20,
			img.KernelVersion, img.Created.Local().Format(time.DateTime), img.Rootfs)
	}
	return tw.Flush()
}
