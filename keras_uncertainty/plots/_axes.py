"""The one place that creates a figure when no Axes is given."""


def axes_or_new(ax, figsize=(5.0, 4.0)):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt  # deferred: importing pyplot picks a backend

    _, ax = plt.subplots(figsize=figsize)
    return ax
