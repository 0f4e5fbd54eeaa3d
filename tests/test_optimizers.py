import keras

from tfkit.optimizers import find_in_chain, innermost, optimizer_chain


def test_chain_walks_keras_loss_scale_optimizer():
    sgd = keras.optimizers.SGD(0.1)
    lso = keras.optimizers.LossScaleOptimizer(sgd)
    assert list(optimizer_chain(lso)) == [lso, sgd]
    assert innermost(lso) is sgd
    assert innermost(sgd) is sgd
    assert find_in_chain(lso, "dynamic_growth_steps") is lso
    assert find_in_chain(lso, "momentum") is sgd
    assert find_in_chain(sgd, "no_such_attribute") is None


def test_two_logical_cpus_for_mirrored_strategy(mirrored_strategy):
    assert mirrored_strategy.num_replicas_in_sync == 2
