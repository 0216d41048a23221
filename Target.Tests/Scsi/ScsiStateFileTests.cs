// The persistent reservation file is replaced durably: temp file, fsync, rename, and an fsync of
// the pool directory so the rename itself survives a crash.
using Microsoft.Extensions.Logging.Abstractions;
using Target.Protocol.Scsi;
using Target.Tests.Interop;

namespace Target.Tests.Scsi;

public sealed class ScsiStateFileTests
{
    [Fact]
    public void Syncing_a_directory_really_opens_it()
    {
        using var temp = new TempDirectory();
        long before = ScsiStateFile.DirectorySyncs;
        ScsiStateFile.SyncDirectory(temp.Path);
        Assert.True(ScsiStateFile.DirectorySyncs > before);
        if (!OperatingSystem.IsWindows())
            Assert.Throws<IOException>(() => ScsiStateFile.SyncDirectory(Path.Combine(temp.Path, "missing")));
    }

    [Fact]
    public void Replace_leaves_the_new_content_no_temp_file_and_a_synced_directory()
    {
        using var temp = new TempDirectory();
        string path = Path.Combine(temp.Path, "state.json");
        File.WriteAllText(path, "old");
        long before = ScsiStateFile.DirectorySyncs;
        ScsiStateFile.Replace(path, "new"u8);
        Assert.Equal("new", File.ReadAllText(path));
        Assert.False(File.Exists(path + ".tmp"));
        Assert.True(ScsiStateFile.DirectorySyncs > before);
    }

    [Fact]
    public void A_persistent_reservation_change_syncs_the_state_directory_before_good()
    {
        using var temp = new TempDirectory();
        var volume = new Target.Tests.Support.MemoryVolume("disk", 16 << 20);
        var f = new ScsiFixture(volume: volume, unit: new ScsiLogicalUnit(volume, ScsiFixture.TargetName, false, NullLogger.Instance, temp.Path));
        byte[] parameters = new byte[24];
        parameters[15] = 0x42;   // service action reservation key 0x42
        byte[] register = [ScsiOpcode.PersistentReserveOut, ScsiPrAction.Register, 0, 0, 0, 0, 0, 0, 24, 0];

        long before = ScsiStateFile.DirectorySyncs;
        ScsiFixture.AssertGood(f.Run(register, parameters));
        Assert.True(ScsiStateFile.DirectorySyncs > before, "the rename of the reservation file was not made durable");
        Assert.Single(Directory.GetFiles(temp.Path, "scsi-pr-*.json"));
        Assert.Empty(Directory.GetFiles(temp.Path, "*.tmp"));
    }
}
