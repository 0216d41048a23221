using Xunit.Abstractions;

namespace Target.Tests.Interop;

/// <summary>
/// A real file system on a Target volume: nbdfuse exposes the volume as a file, mkfs.ext4, mount -o loop,
/// copy a seeded tree in, unmount, fsck.ext4 -n clean; then stop and restart `target serve` and read
/// every file back with the same SHA-256.
/// </summary>
[Collection(InteropCollection.Name)]
[Trait("Category", "Interop")]
public sealed class FileSystemTests(ITestOutputHelper output)
{
    private const int TreeSeed = 7331;

    [Fact]
    public async Task Ext4_on_nbdfuse_survives_restart_with_same_checksums()
    {
        Tool.Require("nbdfuse");
        Tool.Require("fusermount3");
        Tool.Require("mkfs.ext4");
        Tool.Require("fsck.ext4");
        Tool.Require("mount");
        Tool.Require("umount");

        using var temp = new TempDirectory();
        string tree = temp["tree"];
        Dictionary<string, string> expected = MakeTree(tree, TreeSeed);

        await using TargetProcess target = await TargetProcess.StartAsync(output, new TargetProcessOptions { Volumes = ["fs:1G"] });

        string fuse = temp["fuse"];
        string mnt = temp["mnt"];
        Directory.CreateDirectory(fuse);
        Directory.CreateDirectory(mnt);

        try
        {
            await using (BackgroundTool nbdfuse = await FuseAsync(target, fuse, readOnly: false))
            {
                string device = Path.Combine(fuse, "nbd");
                await Tool.RunCheckedAsync("mkfs.ext4", ["-q", "-F", "-b", "4096", device], Timeouts.Medium, output);
                await Tool.RunCheckedAsync("mount", ["-o", "loop", device, mnt], Timeouts.Short, output);
                try
                {
                    CopyTree(tree, mnt);
                }
                finally
                {
                    await Tool.RunCheckedAsync("umount", [mnt], Timeouts.Medium, output);
                }
                ToolResult fsck = await Tool.RunAsync("fsck.ext4", ["-n", "-f", device], Timeouts.Medium, output);
                Assert.True(fsck.ExitCode == 0, $"fsck.ext4 -n found problems:\n{fsck.Stdout}\n{fsck.Stderr}");
                await UnfuseAsync(nbdfuse, fuse);
            }

            Assert.Equal(0, await target.StopAsync());
            await target.StartAgainAsync();

            await using (BackgroundTool nbdfuse = await FuseAsync(target, fuse, readOnly: true))
            {
                string device = Path.Combine(fuse, "nbd");
                await Tool.RunCheckedAsync("mount", ["-o", "loop,ro", device, mnt], Timeouts.Short, output);
                try
                {
                    foreach ((string relative, string sha) in expected)
                    {
                        string path = Path.Combine(mnt, relative);
                        Assert.True(File.Exists(path), $"{relative} is missing after restart");
                        Assert.True(sha == TestData.Sha256(path), $"{relative} changed after restart (tree seed {TreeSeed})");
                    }
                    Assert.Equal(expected.Count, Directory.EnumerateFiles(mnt, "*", SearchOption.AllDirectories).Count(f => !f.Contains("lost+found", StringComparison.Ordinal)));
                }
                finally
                {
                    await Tool.RunCheckedAsync("umount", [mnt], Timeouts.Medium, output);
                }
                await UnfuseAsync(nbdfuse, fuse);
            }
        }
        finally
        {
            // A failed step must not leave a mount behind (it would pin the loop device and the temp directory).
            await UnmountIfMountedAsync(mnt, ["umount", "-l", mnt]);
            await UnmountIfMountedAsync(fuse, ["fusermount3", "-u", "-z", fuse]);
        }
    }

    private async Task UnmountIfMountedAsync(string path, string[] command)
    {
        string mounts = await File.ReadAllTextAsync("/proc/mounts");
        if (mounts.Split('\n').Any(line => line.Split(' ').ElementAtOrDefault(1) == path))
        {
            ToolResult result = await Tool.RunAsync(command[0], command[1..], Timeouts.Short, output);
            output.WriteLine($"cleanup: {string.Join(' ', command)} -> exit {result.ExitCode}");
        }
    }

    private async Task<BackgroundTool> FuseAsync(TargetProcess target, string fuse, bool readOnly)
    {
        var args = new List<string>();
        if (readOnly)
            args.Add("-r");
        args.AddRange([fuse, target.NbdUri("fs")]);
        BackgroundTool nbdfuse = Tool.Start("nbdfuse", args, output);
        string device = Path.Combine(fuse, "nbd");
        DateTime deadline = DateTime.UtcNow + Timeouts.Short;
        while (!File.Exists(device))
        {
            if (nbdfuse.HasExited || DateTime.UtcNow > deadline)
            {
                await nbdfuse.DisposeAsync();
                Assert.Fail($"nbdfuse did not expose {device}: {await nbdfuse.OutputAsync()}");
            }
            await Task.Delay(100);
        }
        return nbdfuse;
    }

    private async Task UnfuseAsync(BackgroundTool nbdfuse, string fuse)
    {
        await Tool.RunCheckedAsync("fusermount3", ["-u", fuse], Timeouts.Short, output);
        Assert.True(await nbdfuse.WaitForExitAsync(Timeouts.Short), "nbdfuse did not exit after unmount");
    }

    /// <summary>A seeded tree: nested directories, sizes from 0 to 1 MiB, some duplicate and all-zero files.</summary>
    private Dictionary<string, string> MakeTree(string root, int seed)
    {
        output.WriteLine($"tree seed {seed}");
        var random = new Random(seed);
        var hashes = new Dictionary<string, string>(StringComparer.Ordinal);
        byte[]? previous = null;
        for (int i = 0; i < 120; i++)
        {
            string relative = Path.Combine($"d{i % 7}", $"e{i % 3}", $"file{i:D3}.bin");
            string path = Path.Combine(root, relative);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            byte[] data;
            if (i % 17 == 5 && previous is not null)
                data = previous; // duplicate content: dedups inside the volume
            else if (i % 19 == 7)
                data = new byte[random.Next(0, 256 * 1024)];
            else
            {
                data = new byte[i % 10 == 0 ? random.Next(512 * 1024, 1024 * 1024) : random.Next(0, 64 * 1024)];
                random.NextBytes(data);
            }
            File.WriteAllBytes(path, data);
            hashes[relative] = TestData.Sha256(path);
            previous = data;
        }
        return hashes;
    }

    private static void CopyTree(string source, string destination)
    {
        foreach (string file in Directory.EnumerateFiles(source, "*", SearchOption.AllDirectories))
        {
            string target = Path.Combine(destination, Path.GetRelativePath(source, file));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(file, target);
        }
    }
}
