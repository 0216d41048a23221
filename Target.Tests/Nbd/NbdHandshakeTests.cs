// Handshake and option haggling against a live server on 127.0.0.1:0.
using System.Buffers.Binary;
using System.Text;
using Microsoft.Extensions.Logging;
using Target.Protocol.Nbd;
using Target.Tests.Support;
using Xunit.Abstractions;

namespace Target.Tests.Nbd;

public sealed class NbdHandshakeTests(ITestOutputHelper output)
{
    private const NbdTransmissionFlags WritableFlags = NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.SendFlush | NbdTransmissionFlags.SendFua
        | NbdTransmissionFlags.SendTrim | NbdTransmissionFlags.SendWriteZeroes | NbdTransmissionFlags.SendFastZero
        | NbdTransmissionFlags.SendCache | NbdTransmissionFlags.CanMultiConn;

    [Fact]
    public async Task Greeting_offers_fixed_newstyle_and_no_zeroes()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await TestNbdClient.ConnectAsync(server.EndPoint);
        ushort flags = await client.ReadGreetingAsync();
        Assert.Equal(NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes, flags);
    }

    [Fact]
    public async Task Go_with_structured_replies_reports_size_flags_block_size_name_and_description()
    {
        var (server, disk, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await server.OpenAsync("disk");
        ExportInfo info = client.Export!;
        Assert.Equal((ulong)disk.SizeBytes, info.SizeBytes);
        Assert.Equal(WritableFlags | NbdTransmissionFlags.SendDf, info.Flags);
        Assert.Equal(1u, info.MinimumBlockBytes);
        Assert.Equal(4096u, info.PreferredBlockBytes);
        Assert.Equal((uint)NbdLimits.MaxRequestBytes, info.MaximumBlockBytes);
        Assert.Equal("disk", info.Name);
        Assert.Equal("test disk", info.Description);
        // The connection is in transmission: a READ works.
        Assert.Equal(new byte[512], await client.ReadAsync(0, 512));
    }

    [Fact]
    public async Task Go_without_structured_replies_does_not_offer_df()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await server.OpenAsync("disk", structured: false);
        Assert.Equal(WritableFlags, client.Export!.Flags);
    }

    [Fact]
    public async Task Info_then_go_give_the_same_answer_and_info_stays_in_haggling()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await TestNbdClient.ConnectAsync(server.EndPoint);
        await client.ReadGreetingAsync();
        await client.SendClientFlagsAsync(NbdHandshakeFlags.ClientFixedNewstyle | NbdHandshakeFlags.ClientNoZeroes);
        (ExportInfo? info, _) = await client.InfoAsync(NbdOption.Info, "disk", NbdInfo.BlockSize);
        (ExportInfo? go, _) = await client.InfoAsync(NbdOption.Go, "disk", NbdInfo.BlockSize);
        Assert.NotNull(info);
        Assert.Equal(info with { Name = null, Description = null }, go! with { Name = null, Description = null });
    }

    [Fact]
    public async Task List_returns_every_export_then_ack()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await TestNbdClient.ConnectAsync(server.EndPoint);
        await client.ReadGreetingAsync();
        await client.SendClientFlagsAsync(NbdHandshakeFlags.ClientFixedNewstyle);
        List<OptionReplyMessage> replies = await client.OptionAsync(NbdOption.List, []);
        Assert.Equal(NbdOptionReply.Ack, replies[^1].Type);
        var names = new List<string>();
        foreach (OptionReplyMessage reply in replies.Take(replies.Count - 1))
        {
            Assert.Equal(NbdOptionReply.Server, reply.Type);
            int nameBytes = (int)BinaryPrimitives.ReadUInt32BigEndian(reply.Data);
            Assert.True(nameBytes <= reply.Data.Length - 4);
            names.Add(Encoding.UTF8.GetString(reply.Data, 4, nameBytes));
        }
        Assert.Equal(["disk", "ro"], names);

        // LIST with data is invalid, and haggling continues.
        replies = await client.OptionAsync(NbdOption.List, [1, 2, 3]);
        Assert.Equal(NbdOptionReply.ErrInvalid, replies[^1].Type);
        (ExportInfo? info, _) = await client.InfoAsync(NbdOption.Go, "disk");
        Assert.NotNull(info);
    }

    [Fact]
    public async Task Unknown_option_gets_err_unsup_and_haggling_continues()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await TestNbdClient.ConnectAsync(server.EndPoint);
        await client.ReadGreetingAsync();
        await client.SendClientFlagsAsync(NbdHandshakeFlags.ClientFixedNewstyle);
        foreach (uint option in new uint[] { 99, NbdOption.StartTls, NbdOption.ExtendedHeaders, NbdOption.PeekExport })
        {
            List<OptionReplyMessage> replies = await client.OptionAsync(option, [0xde, 0xad]);
            Assert.Single(replies);
            Assert.Equal(NbdOptionReply.ErrUnsupported, replies[0].Type);
        }
        (ExportInfo? info, _) = await client.InfoAsync(NbdOption.Go, "disk");
        Assert.NotNull(info);
    }

    [Fact]
    public async Task Unknown_export_in_info_and_go_gets_err_unknown_and_haggling_continues()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await TestNbdClient.ConnectAsync(server.EndPoint);
        await client.ReadGreetingAsync();
        await client.SendClientFlagsAsync(NbdHandshakeFlags.ClientFixedNewstyle);
        foreach (uint option in new[] { NbdOption.Info, NbdOption.Go })
        {
            (ExportInfo? missing, List<OptionReplyMessage> replies) = await client.InfoAsync(option, "no-such-export");
            Assert.Null(missing);
            Assert.Single(replies);
            Assert.Equal(NbdOptionReply.ErrUnknown, replies[0].Type);
        }
        (ExportInfo? info, _) = await client.InfoAsync(NbdOption.Go, "disk");
        Assert.NotNull(info);
    }

    [Fact]
    public async Task Unknown_export_in_export_name_closes_the_connection_with_a_log_line()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await TestNbdClient.ConnectAsync(server.EndPoint);
        await client.ReadGreetingAsync();
        await client.SendClientFlagsAsync(NbdHandshakeFlags.ClientFixedNewstyle);
        await client.SendOptionAsync(NbdOption.ExportName, "nope"u8);
        Assert.True(await client.IsClosedByServerAsync());
        Assert.True(await server.Logger.WaitForAsync(LogLevel.Warning, "unknown export"));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Export_name_replies_with_size_and_flags_and_zero_padding_unless_no_zeroes(bool noZeroes)
    {
        var (server, disk, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await TestNbdClient.ConnectAsync(server.EndPoint);
        await client.ReadGreetingAsync();
        await client.SendClientFlagsAsync(NbdHandshakeFlags.ClientFixedNewstyle | (noZeroes ? NbdHandshakeFlags.ClientNoZeroes : 0));
        await client.SendOptionAsync(NbdOption.ExportName, "disk"u8);
        byte[] reply = await client.ReceiveExactAsync(10 + (noZeroes ? 0 : 124));
        Assert.Equal((ulong)disk.SizeBytes, BinaryPrimitives.ReadUInt64BigEndian(reply));
        Assert.Equal(WritableFlags, (NbdTransmissionFlags)BinaryPrimitives.ReadUInt16BigEndian(reply.AsSpan(8)));
        Assert.All(reply.Skip(10), b => Assert.Equal(0, b));

        // Transmission with simple replies.
        disk.Fill(4096, Enumerable.Repeat((byte)7, 100).ToArray());
        TestReply read = await client.RequestAsync(NbdCommand.Read, 0, 4096, 100);
        Assert.Equal(0u, read.Error);
        Assert.All(read.Data!, b => Assert.Equal(7, b));
    }

    [Fact]
    public async Task Empty_name_selects_the_first_export_or_the_configured_default()
    {
        var (server, disk, readOnly) = NbdTestServer.StartDefault(output);
        await using (server)
        {
            await using TestNbdClient client = await server.OpenAsync("");
            Assert.Equal((ulong)disk.SizeBytes, client.Export!.SizeBytes);
            Assert.Equal("disk", client.Export.Name);
        }

        var configured = new NbdTestServer(output, new NbdServerOptions { DefaultExportName = "ro" }, null,
            new NbdExport("disk", disk, "", false), new NbdExport("ro", readOnly, "", true));
        await using (configured)
        {
            await using TestNbdClient client = await configured.OpenAsync("");
            Assert.Equal((ulong)readOnly.SizeBytes, client.Export!.SizeBytes);
            Assert.True((client.Export.Flags & NbdTransmissionFlags.ReadOnly) != 0);
        }
    }

    [Fact]
    public async Task Read_only_export_has_read_only_flag_and_no_write_features()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await server.OpenAsync("ro");
        Assert.Equal(NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.ReadOnly | NbdTransmissionFlags.SendFlush | NbdTransmissionFlags.SendFua
            | NbdTransmissionFlags.SendCache | NbdTransmissionFlags.CanMultiConn | NbdTransmissionFlags.SendDf, client.Export!.Flags);
    }

    [Fact]
    public async Task Meta_context_list_and_set_negotiate_base_allocation()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await TestNbdClient.ConnectAsync(server.EndPoint);
        await client.ReadGreetingAsync();
        await client.SendClientFlagsAsync(NbdHandshakeFlags.ClientFixedNewstyle | NbdHandshakeFlags.ClientNoZeroes);

        // Before structured replies: invalid.
        List<OptionReplyMessage> replies = await client.OptionAsync(NbdOption.SetMetaContext, TestNbdClient.MetaContextData("disk", NbdMetaContext.BaseAllocation));
        Assert.Equal(NbdOptionReply.ErrInvalid, Assert.Single(replies).Type);

        Assert.Equal(NbdOptionReply.Ack, (await client.OptionAsync(NbdOption.StructuredReply, []))[^1].Type);

        // LIST with no query, and with the "base:" wildcard, names base:allocation.
        foreach (string[] queries in new[] { Array.Empty<string>(), new[] { "base:" } })
        {
            replies = await client.OptionAsync(NbdOption.ListMetaContext, TestNbdClient.MetaContextData("disk", queries));
            Assert.Equal(2, replies.Count);
            Assert.Equal(NbdOptionReply.MetaContext, replies[0].Type);
            Assert.Equal(NbdMetaContext.BaseAllocation, Encoding.UTF8.GetString(replies[0].Data, 4, replies[0].Data.Length - 4));
            Assert.Equal(NbdOptionReply.Ack, replies[1].Type);
        }

        // Unknown namespaces are ignored, not errors.
        replies = await client.OptionAsync(NbdOption.SetMetaContext, TestNbdClient.MetaContextData("disk", "qemu:dirty-bitmap:x", "base:nothing"));
        Assert.Equal(NbdOptionReply.Ack, Assert.Single(replies).Type);

        // Unknown export.
        replies = await client.OptionAsync(NbdOption.SetMetaContext, TestNbdClient.MetaContextData("nope", NbdMetaContext.BaseAllocation));
        Assert.Equal(NbdOptionReply.ErrUnknown, Assert.Single(replies).Type);

        // Malformed: the query count claims more than was sent.
        byte[] malformed = TestNbdClient.MetaContextData("disk", NbdMetaContext.BaseAllocation);
        BinaryPrimitives.WriteUInt32BigEndian(malformed.AsSpan(8), 1000);
        replies = await client.OptionAsync(NbdOption.SetMetaContext, malformed);
        Assert.Equal(NbdOptionReply.ErrInvalid, Assert.Single(replies).Type);

        replies = await client.OptionAsync(NbdOption.SetMetaContext, TestNbdClient.MetaContextData("disk", NbdMetaContext.BaseAllocation));
        Assert.Equal(2, replies.Count);
        Assert.Equal(NbdOptionReply.MetaContext, replies[0].Type);
        Assert.Equal(NbdMetaContext.BaseAllocationId, BinaryPrimitives.ReadUInt32BigEndian(replies[0].Data));
        Assert.Equal(NbdOptionReply.Ack, replies[1].Type);
    }

    [Fact]
    public async Task Abort_is_acknowledged_then_the_server_closes()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await TestNbdClient.ConnectAsync(server.EndPoint);
        await client.ReadGreetingAsync();
        await client.SendClientFlagsAsync(NbdHandshakeFlags.ClientFixedNewstyle);
        List<OptionReplyMessage> replies = await client.OptionAsync(NbdOption.Abort, []);
        Assert.Equal(NbdOptionReply.Ack, Assert.Single(replies).Type);
        Assert.True(await client.IsClosedByServerAsync());
    }

    [Fact]
    public async Task Unknown_client_flags_close_the_connection()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await TestNbdClient.ConnectAsync(server.EndPoint);
        await client.ReadGreetingAsync();
        await client.SendClientFlagsAsync(0x80);
        Assert.True(await client.IsClosedByServerAsync());
        Assert.True(await server.Logger.WaitForAsync(LogLevel.Warning, "unknown client flags"));
    }

    [Fact]
    public async Task Bad_option_magic_closes_the_connection()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await TestNbdClient.ConnectAsync(server.EndPoint);
        await client.ReadGreetingAsync();
        await client.SendClientFlagsAsync(NbdHandshakeFlags.ClientFixedNewstyle);
        await client.SendAsync("GET / HTTP/1.1\r\nHost: x\r\n\r\n"u8.ToArray());
        Assert.True(await client.IsClosedByServerAsync());
        Assert.True(await server.Logger.WaitForAsync(LogLevel.Warning, "bad option magic"));
    }

    [Fact]
    public async Task Oversized_option_closes_the_connection()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await TestNbdClient.ConnectAsync(server.EndPoint);
        await client.ReadGreetingAsync();
        await client.SendClientFlagsAsync(NbdHandshakeFlags.ClientFixedNewstyle);
        var header = new byte[NbdLimits.OptionHeaderBytes];
        NbdOptions.WriteHeader(header, NbdOption.Go, uint.MaxValue);
        await client.SendAsync(header);
        Assert.True(await client.IsClosedByServerAsync());
    }

    [Fact]
    public async Task Exports_added_and_removed_while_running_are_seen_at_handshake()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        var late = new MemoryVolume("late", 8192);
        server.Catalog.Add(new NbdExport("late", late, "added later", false));
        await using (TestNbdClient client = await server.OpenAsync("late"))
        {
            Assert.Equal(8192ul, client.Export!.SizeBytes);
        }
        Assert.True(server.Catalog.Remove("late"));
        await using TestNbdClient again = await TestNbdClient.ConnectAsync(server.EndPoint);
        await again.ReadGreetingAsync();
        await again.SendClientFlagsAsync(NbdHandshakeFlags.ClientFixedNewstyle);
        (ExportInfo? info, _) = await again.InfoAsync(NbdOption.Go, "late");
        Assert.Null(info);
    }

    [Fact]
    public async Task Handshake_timeout_drops_a_silent_client()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output, new NbdServerOptions { HandshakeTimeout = TimeSpan.FromMilliseconds(200) });
        await using var _s = server;
        await using TestNbdClient client = await TestNbdClient.ConnectAsync(server.EndPoint);
        await client.ReadGreetingAsync();
        Assert.True(await client.IsClosedByServerAsync());
        Assert.True(await server.Logger.WaitForAsync(LogLevel.Warning, "handshake not finished"));
    }
}
