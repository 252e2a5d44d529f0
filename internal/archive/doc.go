// Package archive reads the archives uploaded with template builds — tar,
// gzip-compressed tar and zip, told apart by their content (magic bytes),
// never by a name or a Content-Type — and rewrites them as one clean tar
// whose every entry is safe to extract.
//
// Normalize refuses, with an *Error naming the entry, any archive that
// could write outside the directory it is extracted into or otherwise
// surprise the extractor:
//
//   - absolute names, names with a ".." component or a NUL byte;
//   - a symlink whose target, resolved from where the link sits, leaves
//     the archive (absolute targets included);
//   - an entry whose path passes through a symlink or a file of the
//     archive (a later "link/x" after "link -> /etc" is the classic
//     escape);
//   - a hard link to anything but an earlier regular file of the archive;
//   - devices, FIFOs and other special files;
//   - a name that appears twice with different types (directories may
//     repeat);
//   - more than Limits.MaxEntries entries, and more than Limits.MaxBytes
//     bytes of content once uncompressed (ErrTooLarge: the API's 413),
//     counted as the bytes are read, so a zip or gzip bomb stops at the
//     limit whatever its headers claim.
//
// The output keeps names (cleaned, relative, directories ending in "/"),
// permission bits (0777; setuid, setgid and sticky bits are dropped),
// modification times and link targets; owners are root, since a COPY
// step decides who owns what it copies. Because the output is a plain
// tar of checked entries, the build sandbox can unpack it with its own
// tar, and the control plane never writes a path of the archive to its
// own disk.
//
// Why rewrite rather than check and keep the original: the checks and the
// extraction then read the same bytes. A check of one encoding followed
// by an extraction by another tool (which may decode long names, PAX
// headers or zip's duplicate central directory differently) is how
// archive checks are usually bypassed.
package archive
