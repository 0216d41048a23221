// Durable replacement of a small state file (persistent reservations): write a temp file, fsync
// it, rename it over the old one, then fsync the directory. The last step is what makes the rename
// itself survive a crash or power loss: POSIX makes a directory entry durable only when its
// directory is synced, so without it a restart could find the old file (or none) after GOOD.
// Invariant: when Replace returns, the new content is what a restart reads.
using System.Runtime.InteropServices;

namespace Target.Protocol.Scsi;

internal static partial class ScsiStateFile
{
    private const int ReadOnlyFlag = 0;       // O_RDONLY: a directory can be opened (and fsynced) read-only
    private const int InvalidArgument = 22;   // EINVAL: the file system cannot sync directories; nothing more to do

    private static long s_directorySyncs;

    /// <summary>Directories synced since start (tests check that a save synced one).</summary>
    internal static long DirectorySyncs => Interlocked.Read(ref s_directorySyncs);

    /// <summary>Replaces <paramref name="path"/> with <paramref name="content"/> durably. Throws IOException on failure.</summary>
    public static void Replace(string path, ReadOnlySpan<byte> content)
    {
        string temp = path + ".tmp";
        using (var file = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            file.Write(content);
            file.Flush(flushToDisk: true);
        }
        File.Move(temp, path, overwrite: true);
        SyncDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
    }

    /// <summary>fsync(2) of a directory, so that renames and creations in it are durable.</summary>
    public static void SyncDirectory(string directory)
    {
        if (OperatingSystem.IsWindows()) return;   // NTFS journals the rename; a directory cannot be opened this way
        int fd = Open(directory, ReadOnlyFlag);
        if (fd < 0) throw Error("open", directory, Marshal.GetLastPInvokeError());
        try
        {
            if (Fsync(fd) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno != InvalidArgument) throw Error("fsync", directory, errno);
            }
        }
        finally
        {
            Close(fd);
        }
        Interlocked.Increment(ref s_directorySyncs);
    }

    private static IOException Error(string call, string directory, int errno) =>
        new($"{call} of directory {directory} failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})");

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    private static partial int Fsync(int fd);

    [LibraryImport("libc", EntryPoint = "close")]
    private static partial int Close(int fd);
}
