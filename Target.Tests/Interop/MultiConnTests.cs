using Xunit.Abstractions;

namespace Target.Tests.Interop;

/// <summary>
/// Multi-connection consistency: 4 NBD connections write disjoint ranges, all writes are acknowledged,
/// ONE flush on one connection, kill -9, restart: every byte written by every connection is there
/// (what NBD_FLAG_CAN_MULTI_CONN promises). Run in write-back mode (1way-wb), the hardest case.
/// </summary>
[Collection(InteropCollection.Name)]
[Trait("Category", "Interop")]
public sealed class MultiConnTests(ITestOutputHelper output)
{
    private const int Connections = 4;
    private const int RangeBytes = 16 << 20;
    private const int RequestBytes = 1 << 20;
    private const int Seed = 4401;

    [Fact]
    public async Task Four_connections_one_flush_then_kill9_keeps_all_data()
    {
        await using TargetProcess target = await TargetProcess.StartAsync(output, new TargetProcessOptions { Volumes = ["vol0:1G"], WriteMode = "1way-wb" });
        using var cts = new CancellationTokenSource(Timeouts.Medium);

        byte[][] data = Enumerable.Range(0, Connections).Select(i => TestData.Random(Seed + i, RangeBytes, output)).ToArray();
        var clients = new RawNbdClient[Connections];
        try
        {
            for (int i = 0; i < Connections; i++)
                clients[i] = await RawNbdClient.ConnectAsync(target.NbdEndPoint, "vol0", cts.Token);

            Assert.True((clients[0].TransmissionFlags & RawNbdClient.TransmissionCanMultiConn) != 0,
                "the export must advertise NBD_FLAG_CAN_MULTI_CONN (a flush on one connection covers writes acknowledged on all)");

            // Interleaved ranges: connection i writes every 4th MiB of a 64 MiB window starting at 8 MiB.
            await Task.WhenAll(Enumerable.Range(0, Connections).Select(async i =>
            {
                for (int block = 0; block < RangeBytes / RequestBytes; block++)
                {
                    long offset = Offset(i, block);
                    await clients[i].WriteAsync(offset, data[i].AsMemory(block * RequestBytes, RequestBytes), cts.Token);
                }
            }));

            await clients[2].FlushAsync(cts.Token);
        }
        finally
        {
            foreach (RawNbdClient? client in clients)
                if (client is not null)
                    await client.DisposeAsync();
        }

        target.Kill();
        await target.StartAgainAsync();

        await using RawNbdClient reader = await RawNbdClient.ConnectAsync(target.NbdEndPoint, "vol0", cts.Token);
        byte[] actual = new byte[RequestBytes];
        for (int i = 0; i < Connections; i++)
        {
            for (int block = 0; block < RangeBytes / RequestBytes; block++)
            {
                await reader.ReadAsync(Offset(i, block), actual, cts.Token);
                long difference = TestData.FirstDifference(data[i].AsSpan(block * RequestBytes, RequestBytes), actual);
                Assert.True(difference < 0, $"connection {i} block {block} (offset {Offset(i, block)}) differs at +{difference} after kill -9 (seed {Seed + i})");
            }
        }
    }

    private static long Offset(int connection, int block) => (8L << 20) + ((long)block * Connections + connection) * RequestBytes;
}
