// The write cache's slab is addressed with 64-bit offsets: a cache of 2 GiB or more (524,288
// pages and up) is created and its last page holds its own data apart from the first.
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
}
