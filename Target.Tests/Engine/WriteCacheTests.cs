// The write cache's slab is addressed with 64-bit offsets: a cache of 2 GiB or more (524,288
// pages and up) is created and its last page holds its own data apart from the first. A landed
// page's memory goes to the read cache without a copy, and the page reused afterwards does not
// share it.
using System.Runtime.CompilerServices;
using Target.Dedup.Engine;

namespace Target.Tests.Engine;

public sealed class WriteCacheTests
{
    [Fact]
    public void ACacheLargerThanTwoGibibytesAddressesItsLastPage()
    {
        const int pages = (int)((2L << 30) / WriteCache.PageBytes) + 1;
        using var cache = new WriteCache(pages);
        Assert.Equal(pages, cache.Pages);

        var pagesTaken = new List<int>();
        while (cache.HasFreePage) pagesTaken.Add(cache.Add(WriteCache.KeyOf(1, pagesTaken.Count)));
        int first = pagesTaken.Min(), last = pagesTaken.Max();
        Assert.Equal(0, first);
        Assert.Equal(pages - 1, last);

        cache.Data(first).Fill(0x11);
        cache.Data(last).Fill(0xEE);
        Assert.True(cache.Data(first).IndexOfAnyExcept((byte)0x11) < 0);
        Assert.True(cache.Data(last).IndexOfAnyExcept((byte)0xEE) < 0);
    }

    [Fact]
    public unsafe void ALandedPageGoesToTheReadCacheAndItsNextUseDoesNotTouchTheCachedChunk()
    {
        using var cache = new WriteCache(64);
        using var readCache = new ChunkCache(4 * WriteCache.PageBytes);
        const uint id = 7;
        int page = cache.Add(WriteCache.KeyOf(1, 10));
        cache.Data(page).Fill(0x5A);
        cache.MarkDirty(page, nowMs: 0, isNew: true, PageDigest.None);
        Assert.True(cache.TryPeek(out int peeked, out long ticket, out _));
        Assert.Equal(page, peeked);
        cache.TakeForBatch(page);
        Assert.Throws<InvalidOperationException>(() => cache.GiveToReadCache(page, readCache, id));
        Assert.True(cache.Landed(page, ticket));

        cache.GiveToReadCache(page, readCache, id);
        int reused = cache.Add(WriteCache.KeyOf(1, 11));
        Assert.Equal(page, reused); // the free stack hands the same page out again
        cache.Data(reused).Fill(0xC3);

        byte[] read = new byte[WriteCache.PageBytes];
        Assert.True(readCache.TryCopy(id, 0, read));
        Assert.True(read.AsSpan().IndexOfAnyExcept((byte)0x5A) < 0, "the read cache's copy of the chunk changed when its old page was reused");
        Assert.True(cache.Data(reused).IndexOfAnyExcept((byte)0xC3) < 0);
        Assert.Equal(0, (long)Unsafe.AsPointer(ref cache.Data(reused)[0]) % WriteCache.PageBytes);
    }
}
